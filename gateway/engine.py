"""The intake engine: what every transport hands its mail to (SMTP, LMTP, IMAP, the spool of the MTA pipe, stdin,
files, Maildirs, mboxes). It owns the batching, the preparation worker (gateway.prepare: the CPU work of a mail
in a killable process, within limits.mail_cpu_seconds), the tries counted on stored mail; gateway.intake runs
each mail in its savepoint and records the outcome (`Intake._settle`, the one place a Decision takes effect).

Two roads, one engine:
- stored mail (SMTP, LMTP, IMAP, the spool: durable before the transport says yes): `Engine.thread(ids)`,
  a batch of stored mails in one write transaction, prepared ahead outside the write lock;
- sources that keep the mail until we return (files, Maildirs, mboxes, stdin): `Engine.import_stream`, new
  mails stored and threaded together, a batch per write transaction, each reported once its commit returned.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from sqlalchemy import Integer, case, column, func, select, update
from sqlalchemy.dialects import postgresql

from gateway.auth.headers import HEAD_LIMIT
from gateway.db import StoreUnavailable, is_unavailable, transaction
from gateway.envelope import Envelope
from gateway.intake import IngestBatch, Intake, Result
from gateway.models import InboundMail, InboundRaw, table_of
from gateway.store import raw as rawstore

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.host import IntakeHost
    from gateway.prepare import ParseAhead, Preparing

# A stored mail is tried at most this many times without getting an outcome (each try ended with the process:
# killed, out of memory); the next time it is quarantined without running. Not 2: a service killed often for
# other reasons (random SIGKILLs under load, tests/integration/test_service_faults.py) catches an innocent mail
# in a killed batch and then once alone now and then; the CPU work of a mail has its own bound (the worker).
MAX_TRIES = 5
# One import transaction holds at most this many bytes of mail, or seconds of work: few commits, and the write
# lock is never held long enough to starve a concurrent writer (the service's listeners).
BATCH_BYTES = 64 * 2**20
BATCH_SECONDS = 1.0
# Mails whose lookups are made together (gateway.store.sql.prefetch), when the worker has prepared them.
PREFETCH = 16
# PostgreSQL: the first key of the advisory locks that claim stored mails being threaded (Engine._claimed); the
# second is the mail's id. gateway.migrate's lock is the one-key 724274.
CLAIM_LOCK_CLASS = 724275
# A stored mail this large is handed to the worker in a file, not in memory: serve does not hold it while the
# worker parses it, and the worker is restarted after it (gateway.prepare: what it allocated goes back).
SPILL_BYTES = 4 * 1024 * 1024
# Of a large mail the worker parsed, the bytes read back for the handlers: its header block, as much of it as
# gateway.auth reads (header_fields finds the same end of the header within HEAD_LIMIT and the 4 bytes after).
HEAD_BYTES = HEAD_LIMIT + 4


def start_worker(config: Config, *, context: str = "fork", sender: str | None = None,
                 blobs: bool = True) -> ParseAhead:
    """The preparation worker for this configuration (limits, attachment store, own domains), started.
    sender: every mail has this envelope sender (an import); else each mail's own. blobs=False: it writes no
    attachment blob (a dry run)."""
    from gateway.autoreply import own_domains_of
    from gateway.prepare import ParseAhead

    limits = config.limits
    own = own_domains_of(config.gateway_addresses)
    ahead = ParseAhead(max_depth=limits["max_mime_depth"], max_parts=limits["max_mime_parts"],
                       blob_root=str(config.attachments_dir) if blobs else None,
                       classify_for=(sender, own) if sender is not None else None, own_domains=own,
                       budget=float(limits["mail_cpu_seconds"]), context=context)
    ahead.start()
    return ahead


class _Spilled:
    """Temporary files holding the raw bytes of large mails for the worker, and its results (removed on exit)."""

    def __init__(self, app: IntakeHost) -> None:
        self.dir = app.config.data_dir
        self.paths: list[str] = []

    def __enter__(self) -> _Spilled:
        return self

    def spill(self, session: Any, mail_id: int) -> str | bytes:
        """A file with the mail's raw bytes (its path), written a chunk at a time; b"" when it has none."""
        fd, path = tempfile.mkstemp(prefix=".prepare-", suffix=".eml", dir=self.dir)
        self.paths.append(path)
        try:
            return path if rawstore.copy_raw(session, mail_id, fd) else b""
        finally:
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        from gateway.prepare import RESULT_SUFFIX

        for p in self.paths:
            for path in (p, p + RESULT_SUFFIX):  # and the worker's result, when it was not read
                with contextlib.suppress(OSError):
                    os.unlink(path)


class ImportStopped(Exception):
    """An import stopped before its end (store unavailable, disk full): what the operator is told; nothing of
    the open transaction was stored (its sources are still there)."""


class ImportSource(Protocol):
    """One mail of an import: where it is, and its raw bytes (None: not read)."""

    @property
    def ref(self) -> str: ...

    @property
    def raw(self) -> bytes | None: ...


S = TypeVar("S", bound=ImportSource)


def _tried_alone(ids: list[int], tried: dict[int, int]) -> list[list[int]]:
    """A guarded batch's write transactions, in order: each mail tried before without an outcome alone (one that
    takes the process down takes only itself), then the rest together."""
    again = [i for i in ids if tried.get(i, 0) > 0]
    fresh = [i for i in ids if tried.get(i, 0) <= 0]
    return [[i] for i in again] + ([fresh] if fresh else [])


class Staged:
    """A batch of stored mails read and prepared (`Engine.stage`), waiting for its write transactions."""

    def __init__(self, engine: Engine, ids: list[int], guard: bool, skip_locked: bool = False) -> None:
        self.engine, self.ids, self.guard, self.skip_locked = engine, ids, guard, skip_locked
        self.claims = False                     # PostgreSQL, skip_locked: claimed and prepared in the run (thread)
        self.tried: dict[int, int] = {}         # tries counted on each mail still to be threaded
        self.raws: dict[int, bytes] = {}
        self.prepared: dict[int, Any] = {}
        self.pending: Callable[[bool], None] | None = None  # stage(wait=False): the worker's results, not taken

    def ready(self) -> None:
        """Wait for the worker's preparation of these mails (`Engine.stage(wait=False)`); at once when done."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending(True)

    def parts(self) -> list[list[int]]:
        """Its write transactions, in order: guard: each mail tried before without an outcome alone, then the
        rest together; else all together."""
        if not self.ids:
            return []
        if not self.guard:
            return [self.ids]
        return _tried_alone(self.ids, self.tried)

    def drop(self) -> None:
        """The mails are the engine's no more (run, or given up: the sweep finds them); the worker's results of a
        batch given up are taken and thrown away (the worker is free again)."""
        pending, self.pending = self.pending, None
        try:
            if pending is not None:
                pending(False)
        finally:
            with self.engine._lock:
                self.engine._busy.difference_update(self.ids)


class Engine:
    def __init__(self, app: IntakeHost, intake: Intake | None = None) -> None:
        self.app = app
        self.intake = intake or Intake(app)
        self._lock = threading.Lock()
        self._busy: set[int] = set()  # mails being threaded here now (serve's workers and its sweep share them)

    # Stored mail --------------------------------------------------------------------------------------------
    def thread(self, mail_ids: Sequence[int], *, hold: Callable[[], contextlib.AbstractContextManager[Any]] | None
               = None, guard: bool = True, skip_locked: bool = False) -> list[Result]:
        """Thread stored mails as one batch (`Intake.process_many`): the path of every stored mail.

        The raw bytes are read and prepared by the app's worker process (parse, HTML, classify, attachment
        blobs, within limits.mail_cpu_seconds) before `hold()` (the caller's write gate) is taken, so that the
        write transaction holds only database work. guard: each try is counted on the mail row and committed
        before it runs (`attempts`); a mail tried before without an outcome runs alone, and one that got no
        outcome in MAX_TRIES tries (it took the process down) is quarantined without running again. A mail that
        another thread of this engine is threading now is left out (its try is counted once). skip_locked (the
        sweep, on PostgreSQL): a mail that another instance sharing the database is threading now (its row is
        locked) is left out too, instead of waiting for that transaction and then finding the mail done, and so
        is a mail threaded already (no result for either)."""
        hold = hold or contextlib.nullcontext
        with self._lock:
            ids = [i for i in dict.fromkeys(mail_ids) if i not in self._busy]
            self._busy.update(ids)
        try:
            if not guard:
                return self._thread_batch(ids, hold, counted=False)
            with self._claimed(ids, skip_locked) as mine:
                return self._thread_guarded(mine, hold, skip_locked)
        finally:
            with self._lock:
                self._busy.difference_update(ids)

    def stage(self, mail_ids: Sequence[int], *, guard: bool = True, skip_locked: bool = False,
              wait: bool = True) -> Staged:
        """`thread` in two steps, `stage` then `run_staged`: a caller that stages the next batch while this one
        runs keeps the worker process and the database busy at once (serve's workers). This first step, outside
        any write transaction: the mails' rows read (without the write lock) and prepared by the worker process.
        wait=False: the mails are handed to the worker and this returns at once; `run_staged` (or
        `Staged.ready`) waits for the worker's results, so that one thread writes one batch while the worker
        prepares the next (`ThreadAhead`; `ParseAhead.begin`: another thread may use the worker meanwhile).
        The mails are this engine's until `run_staged` ran them (or `Staged.drop`). skip_locked on PostgreSQL
        (several instances): the claims, the reading and the preparing are left to `run_staged`, as `thread`
        does them (a mail another instance threads now is neither prepared nor counted here)."""
        with self._lock:
            ids = [i for i in dict.fromkeys(mail_ids) if i not in self._busy]
            self._busy.update(ids)
        staged = Staged(self, ids, guard, skip_locked)
        try:
            if ids and skip_locked and guard and self._dialect() == "postgresql":
                staged.claims = True
            elif ids:
                self._prepare(staged, wait=wait)
        except BaseException:
            staged.drop()
            raise
        return staged

    def run_staged(self, staged: Staged, *, hold: Callable[[], contextlib.AbstractContextManager[Any]] | None
                   = None) -> list[Result]:
        """The second step of `thread`: the write transactions, each inside `hold()` (guard: the try counted
        and committed first, in the same turn)."""
        hold = hold or contextlib.nullcontext
        out: list[Result] = []
        try:
            staged.ready()
            if staged.claims:
                with self._claimed(staged.ids, True) as mine:
                    return self._thread_guarded(mine, hold, True)
            for part in staged.parts():
                exhausted = {i for i in part if staged.tried.get(i, 0) >= MAX_TRIES} if staged.guard else set()
                with hold():
                    if staged.guard:
                        self.intake._retrying(lambda b=part: self._count_try(b), "counting a try")  # type: ignore[misc]
                    out.extend(self.intake.process_many(part, prepared=staged.prepared, raws=staged.raws,
                                                        counted=staged.guard, exhausted=exhausted,
                                                        skip_locked=staged.skip_locked))
        finally:
            staged.drop()
        return out

    def _dialect(self) -> str:
        bind = self.app.sessions.kw.get("bind")
        return str(bind.dialect.name) if bind is not None else ""

    def _prepare(self, staged: Staged, exhausted: set[int] | None = None, *, wait: bool = True) -> None:
        """The batch's mails read and prepared by the worker (`staged.raws`, `.prepared`, `.tried`), but those
        `exhausted` (default: guard, and tried MAX_TRIES times already). A large mail (SPILL_BYTES or more) goes
        to the worker in a file; once the worker prepared it, only its header block is read here: the raw bytes
        the handlers read of a mail the worker parsed (`Prepared.answers_parse`; gateway.auth reads the header).
        wait=False: the worker's results are taken by `staged.ready()` (see `stage`)."""
        rows = self._read_stored(staged.ids)
        staged.tried = {i: attempts for i, (attempts, _, _, _) in rows.items()}
        if exhausted is None:
            exhausted = {i for i, (attempts, _, _, _) in rows.items() if staged.guard and attempts >= MAX_TRIES}
        work = [i for i in staged.ids if i in rows and rows[i][3] and i not in exhausted]
        small: dict[int, bytes] = {i: rows[i][2] for i in work if rows[i][2] is not None}  # type: ignore[misc]
        large = [i for i in work if i not in small]  # SPILL_BYTES or more: not read by _read_stored
        ahead = self.app.ahead
        task: Preparing | None = None
        spilled = _Spilled(self.app)
        if ahead is not None and work:
            try:
                files: dict[int, str | bytes] = {}
                if large:  # the worker reads a large mail from a file: serve does not hold it meanwhile
                    with self.app.sessions() as s:
                        files = {i: spilled.spill(s, i) for i in large}
                task = ahead.begin([small[i] if i in small else files[i] for i in work], [rows[i][1] for i in work])
            except BaseException:
                spilled.close()
                raise

        def collect(keep: bool) -> None:
            try:
                preps = task.results() if task is not None else [None] * len(work)
            finally:
                spilled.close()
            if keep:
                staged.prepared = {i: prep for i, prep in zip(work, preps, strict=True) if prep is not None}
                heads = {i for i in large if i in staged.prepared and staged.prepared[i].answers_parse}
                staged.raws = small | self._read_large(large, heads)

        staged.pending = collect
        if wait:
            staged.ready()

    def _read_large(self, ids: list[int], heads: set[int]) -> dict[int, bytes]:
        """The raw bytes of the large mails among a batch (one copy each, gateway.store.raw); of those in
        `heads`, the first HEAD_BYTES only."""
        if not ids:
            return {}
        with self.app.sessions() as s:
            found = {i: rawstore.read_raw(s, i, limit=HEAD_BYTES if i in heads else None) for i in ids}
        return {i: data for i, data in found.items() if data is not None}

    def _read_stored(self, ids: list[int]) -> dict[int, tuple[int, str | None, bytes | None, bool]]:
        """id -> (tries counted, envelope sender, raw bytes, raw bytes stored) of each mail still to be threaded,
        read without waiting for the write transaction of the batch before this one (gateway.store.raw
        read_last_commit). A mail of SPILL_BYTES or more: its bytes are not read here (None)."""
        m, r = table_of(InboundMail), table_of(InboundRaw)
        q = (select(m.c.id, m.c.attempts, m.c.envelope_from,
                    case((m.c.size < SPILL_BYTES, r.c.data), else_=None), r.c.mail_id.is_not(None))
             .select_from(m.outerjoin(r, r.c.mail_id == m.c.id)).where(m.c.id.in_(ids), m.c.outcome == "received"))
        try:
            rows = rawstore.read_last_commit(self.app.sessions, q)
        except Exception as e:
            if is_unavailable(e):
                raise StoreUnavailable(str(e)) from e
            raise
        return {int(i): (int(attempts or 0), sender, data, bool(stored))
                for i, attempts, sender, data, stored in rows}

    @contextlib.contextmanager
    def _claimed(self, ids: list[int], skip_locked: bool) -> Iterator[list[int]]:
        """skip_locked on PostgreSQL: the mails no other instance threads now, each claimed for the duration by a
        session-level advisory lock on a connection of its own (released at the end, or by the server when the
        process dies); another instance's workers and sweep leave them out, so a mail is prepared, counted and
        run by one instance, not by every one whose sweep found it. Else: all of them, unclaimed."""
        if not (skip_locked and ids):
            yield ids
            return
        with self.app.sessions() as s:
            bind = s.get_bind()
        if bind.dialect.name != "postgresql":
            yield ids
            return
        ints = postgresql.array(ids, type_=Integer)
        with bind.engine.connect() as conn:
            mine = list(conn.execute(select(column("id", Integer)).select_from(func.unnest(ints).alias("id"))
                                     .where(func.pg_try_advisory_lock(CLAIM_LOCK_CLASS, column("id", Integer))))
                        .scalars())
            conn.commit()  # the locks are the session's: they outlive the transaction
            try:
                yield [i for i in ids if i in set(mine)]
            finally:
                if mine:
                    conn.execute(select(func.pg_advisory_unlock(CLAIM_LOCK_CLASS, column("id", Integer)))
                                 .select_from(func.unnest(postgresql.array(mine, type_=Integer)).alias("id")))
                    conn.commit()

    def _thread_guarded(self, ids: list[int], hold: Callable[[], contextlib.AbstractContextManager[Any]],
                        skip_locked: bool = False) -> list[Result]:
        if not ids:
            return []
        tried = self._tried(ids)
        out: list[Result] = []
        for batch in _tried_alone(ids, tried):
            with hold():
                counted = self.intake._retrying(lambda b=batch: self._count_try(b, skip_locked),  # type: ignore[misc]
                                                "counting a try")
            if skip_locked:
                batch = [i for i in batch if i in counted]
                if not batch:
                    continue
            out.extend(self._thread_batch(batch, hold, counted=True, skip_locked=skip_locked,
                                          exhausted={i for i in batch if tried.get(i, 0) >= MAX_TRIES}))
        return out

    def _tried(self, ids: list[int]) -> dict[int, int]:
        """Tries counted on each mail still to be threaded."""
        with self.app.sessions() as s:
            return dict(s.execute(select(InboundMail.id, InboundMail.attempts).where(
                InboundMail.id.in_(ids), InboundMail.outcome == "received")).all())

    def _count_try(self, ids: list[int], skip_locked: bool = False) -> set[int]:
        """Count a try on each of these mails still to be threaded; the ids counted. skip_locked (PostgreSQL):
        not on a mail whose row another transaction holds (another instance threads it now)."""
        with transaction(self.app.sessions) as s:
            todo = (InboundMail.id.in_(ids), InboundMail.outcome == "received")
            if not (skip_locked and s.get_bind().dialect.name == "postgresql"):
                s.execute(update(InboundMail).where(*todo).values(attempts=InboundMail.attempts + 1))
                return set(ids)
            free = select(InboundMail.id).where(*todo).with_for_update(skip_locked=True).scalar_subquery()
            return set(s.execute(update(table_of(InboundMail)).where(table_of(InboundMail).c.id.in_(free))
                                 .values(attempts=table_of(InboundMail).c.attempts + 1)
                                 .returning(table_of(InboundMail).c.id)).scalars())

    def _thread_batch(self, ids: list[int], hold: Callable[[], contextlib.AbstractContextManager[Any]], *,
                      counted: bool, exhausted: set[int] | None = None, skip_locked: bool = False) -> list[Result]:
        staged = Staged(self, ids, guard=False, skip_locked=skip_locked)
        if ids:
            self._prepare(staged, exhausted or set())
        with hold():
            return self.intake.process_many(ids, prepared=staged.prepared, raws=staged.raws, counted=counted,
                                            exhausted=exhausted, skip_locked=skip_locked)

    # Imports ---------------------------------------------------------------------------------------------
    def import_stream(self, sources: Iterable[S], envelope: Callable[[S], Envelope], *,
                      report: Callable[[S, Result], None], unreadable: Callable[[S], None],
                      ahead: ParseAhead | None = None, batch_mails: int = 200,
                      disk_low: Callable[[], bool] = lambda: False) -> None:
        """Store and thread new mails in batches (`Intake.batch`: one write transaction, a savepoint each), the
        worker preparing the next chunk ahead; `report` hears of each mail once the commit holding it returned,
        `unreadable` of a source whose bytes could not be read. Raises ImportStopped (the open batch is rolled
        back: nothing of it is stored)."""
        stream = ahead.stream((None, s.ref, s.raw, s) for s in sources) if ahead is not None else (
            ((None, s.ref, s.raw, s), None) for s in sources)
        run = _ImportRun(self.intake, envelope, report, unreadable, batch_mails, disk_low)
        try:
            for chunk in _chunks(stream, PREFETCH if ahead is not None else 1):
                run.chunk([(item[3], prep) for item, prep in chunk], prefetch=ahead is not None)
            run.commit(last=True)
        finally:
            run.close()


class ThreadAhead:
    """`Engine.thread` for a caller that threads stored mail batch after batch in one thread (the IMAP poller):
    `thread(ids, then=next_ids)` hands the next batch to the worker process (`Engine.stage(wait=False)`) before
    this batch's write transactions run (`Engine.run_staged`), and the next call, for those ids, takes the
    worker's results: the worker prepares one batch while this thread writes the other, with no hand-over
    between threads (serve's threading workers stage in a thread of their own). `stage(ids)` hands a batch
    over ahead of other work of the caller's. A batch staged and not threaded next is dropped (`Staged.drop`:
    its mails stay `received`, no try counted). Called as `thread(ids)` it is `Engine.thread` in one turn."""

    def __init__(self, engine: Engine, hold: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
                 ) -> None:
        self.engine, self.hold = engine, hold
        self._staged: Staged | None = None
        self._for: tuple[int, ...] = ()

    def __call__(self, mail_ids: Sequence[int], *, then: Sequence[int] = ()) -> list[Result]:
        staged, self._staged = self._staged, None
        if staged is not None and self._for != tuple(mail_ids):
            staged.drop()
            staged = None
        if staged is None and not then:
            return self.engine.thread(mail_ids, hold=self.hold)
        try:
            if staged is None:
                staged = self.engine.stage(mail_ids)
            staged.ready()  # the worker is free for the next batch
            self.stage(then)
        except BaseException:
            if staged is not None:
                staged.drop()
            raise
        try:
            return self.engine.run_staged(staged, hold=self.hold)
        except BaseException:
            staged.drop()  # (run_staged did, unless it failed before it began)
            self.drop()
            raise

    @property
    def staged_for(self) -> tuple[int, ...]:
        """The mails of the batch handed to the worker ahead (none: ())."""
        return self._for if self._staged is not None else ()

    def stage(self, mail_ids: Sequence[int]) -> None:
        """Hand these mails to the worker now, without waiting: the next call of this threads them (staged
        already: nothing to do)."""
        if self._staged is not None and self._for == tuple(mail_ids):
            return
        self.drop()
        if mail_ids:
            self._staged, self._for = self.engine.stage(mail_ids, wait=False), tuple(mail_ids)

    def drop(self) -> None:
        """Give up the batch staged, if any (see `Staged.drop`)."""
        staged, self._staged = self._staged, None
        if staged is not None:
            staged.drop()


class _ImportRun(Generic[S]):
    def __init__(self, intake: Intake, envelope: Callable[[S], Envelope], report: Callable[[S, Result], None],
                 unreadable: Callable[[S], None], batch_mails: int, disk_low: Callable[[], bool]) -> None:
        self.intake, self.envelope, self.report, self.unreadable = intake, envelope, report, unreadable
        self.batch_mails, self.disk_low = batch_mails, disk_low
        self.batch: IngestBatch | None = None
        self.done: list[tuple[S, Result]] = []

    def chunk(self, items: list[tuple[S, Any]], *, prefetch: bool) -> None:
        for i, (src, prepared) in enumerate(items):
            if src.raw is None:
                self.unreadable(src)
                continue
            batch = self._open(src)
            if prefetch and (i == 0 or batch.count == 0):
                # the lookups of this mail and the rest of its chunk, made for all of them at once
                batch.prefetch([(self.envelope(s), p) for s, p in items[i:] if s.raw is not None])
            try:
                self.done.append((src, batch.ingest(src.raw, self.envelope(src), prepared)))
            except StoreUnavailable as e:
                n = len(self.done) + 1  # the mails of the rolled-back transaction
                held = f" (nor the other {n - 1} mail(s) of its transaction)" if n > 1 else ""
                raise ImportStopped(f"could not store {src.ref}{held}: {e}") from e
            if batch.count >= self.batch_mails or batch.size >= BATCH_BYTES or batch.age() >= BATCH_SECONDS:
                self.commit()

    def _open(self, src: S) -> IngestBatch:
        if self.batch is None:
            if self.disk_low():  # the data directory filled up during the import
                raise ImportStopped(f"free space in {self.intake.app.config.data_dir} is low: stopped before "
                                    f"{src.ref}; try again later")
            self.batch = self.intake.batch()
        return self.batch

    def commit(self, *, last: bool = False) -> None:
        if self.batch is not None:
            b, self.batch = self.batch, None
            try:
                b.commit()
            except StoreUnavailable as e:
                if last:
                    raise ImportStopped(f"could not store the last {len(self.done)} mail(s): {e}") from e
                raise ImportStopped(f"could not store {len(self.done)} mail(s): {e}") from e
        for src, result in self.done:
            self.report(src, result)
        self.done.clear()

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()  # not committed: nothing of it is stored, the sources are still there
            self.batch = None


def _chunks(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


__all__ = ["Engine", "ImportSource", "ImportStopped", "MAX_TRIES", "Staged", "ThreadAhead", "start_worker"]
