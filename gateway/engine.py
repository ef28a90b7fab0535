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

from sqlalchemy import case, select, update

from gateway import rawstore
from gateway.db import StoreUnavailable, transaction
from gateway.envelope import Envelope
from gateway.intake import IngestBatch, Intake, Result
from gateway.models import InboundMail, InboundRaw

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.host import IntakeHost
    from gateway.prepare import ParseAhead

# A stored mail is tried at most this many times without getting an outcome (each try ended with the process:
# killed, out of memory); the next time it is quarantined without running. Not 2: a service killed often for
# other reasons (random SIGKILLs under load, tests/integration/test_service_faults.py) catches an innocent mail
# in a killed batch and then once alone now and then; the CPU work of a mail has its own bound (the worker).
MAX_TRIES = 5
# One import transaction holds at most this many bytes of mail, or seconds of work: few commits, and the write
# lock is never held long enough to starve a concurrent writer (the service's listeners).
BATCH_BYTES = 64 * 2**20
BATCH_SECONDS = 1.0
# Mails whose lookups are made together (gateway.prefetch), when the worker has prepared them.
PREFETCH = 16
# A stored mail this large is handed to the worker in a file, not in memory: serve does not hold it while the
# worker parses it, and the worker is restarted after it (gateway.prepare: what it allocated goes back).
SPILL_BYTES = 4 * 1024 * 1024


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
    """Temporary files holding the raw bytes of large mails for the worker (removed on exit)."""

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
        for p in self.paths:
            with contextlib.suppress(OSError):
                os.unlink(p)


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


class Engine:
    def __init__(self, app: IntakeHost, intake: Intake | None = None) -> None:
        self.app = app
        self.intake = intake or Intake(app)
        self._lock = threading.Lock()
        self._busy: set[int] = set()  # mails being threaded here now (serve's workers and its sweep share them)

    # Stored mail --------------------------------------------------------------------------------------------
    def thread(self, mail_ids: Sequence[int], *, hold: Callable[[], contextlib.AbstractContextManager[Any]] | None
               = None, guard: bool = True) -> list[Result]:
        """Thread stored mails as one batch (`Intake.process_many`): the path of every stored mail.

        The raw bytes are read and prepared by the app's worker process (parse, HTML, classify, attachment
        blobs, within limits.mail_cpu_seconds) before `hold()` (the caller's write gate) is taken, so that the
        write transaction holds only database work. guard: each try is counted on the mail row and committed
        before it runs (`attempts`); a mail tried before without an outcome runs alone, and one that got no
        outcome in MAX_TRIES tries (it took the process down) is quarantined without running again. A mail that
        another thread of this engine is threading now is left out (its try is counted once)."""
        hold = hold or contextlib.nullcontext
        with self._lock:
            ids = [i for i in dict.fromkeys(mail_ids) if i not in self._busy]
            self._busy.update(ids)
        try:
            return self._thread_guarded(ids, hold) if guard else self._thread_batch(ids, hold, counted=False)
        finally:
            with self._lock:
                self._busy.difference_update(ids)

    def _thread_guarded(self, ids: list[int], hold: Callable[[], contextlib.AbstractContextManager[Any]]
                        ) -> list[Result]:
        if not ids:
            return []
        tried = self._tried(ids)
        again = [i for i in ids if tried.get(i, 0) > 0]
        fresh = [i for i in ids if i not in again]
        out: list[Result] = []
        for batch in [[i] for i in again] + ([fresh] if fresh else []):
            with hold():
                self.intake._retrying(lambda b=batch: self._count_try(b), "counting a try")  # type: ignore[misc]
            out.extend(self._thread_batch(batch, hold, counted=True,
                                          exhausted={i for i in batch if tried.get(i, 0) >= MAX_TRIES}))
        return out

    def _tried(self, ids: list[int]) -> dict[int, int]:
        """Tries counted on each mail still to be threaded."""
        with self.app.sessions() as s:
            return dict(s.execute(select(InboundMail.id, InboundMail.attempts).where(
                InboundMail.id.in_(ids), InboundMail.outcome == "received")).all())

    def _count_try(self, ids: list[int]) -> None:
        with transaction(self.app.sessions) as s:
            s.execute(update(InboundMail).where(InboundMail.id.in_(ids), InboundMail.outcome == "received")
                      .values(attempts=InboundMail.attempts + 1))

    def _thread_batch(self, ids: list[int], hold: Callable[[], contextlib.AbstractContextManager[Any]], *,
                      counted: bool, exhausted: set[int] | None = None) -> list[Result]:
        raws: dict[int, bytes] = {}
        prepared: dict[int, Any] = {}
        ahead = self.app.ahead
        work = [i for i in ids if i not in (exhausted or ())]
        if ahead is not None and work:
            with _Spilled(self.app) as spilled:
                with self.app.sessions() as s:
                    # a large mail's bytes are not read here: the worker reads them from a file (_Spilled)
                    rows = s.execute(select(InboundRaw.mail_id, InboundMail.envelope_from, InboundMail.size,
                                            case((InboundMail.size < SPILL_BYTES, InboundRaw.data), else_=None)
                                            .label("data"))
                                     .join(InboundMail, InboundMail.id == InboundRaw.mail_id)
                                     .where(InboundRaw.mail_id.in_(work), InboundMail.outcome == "received")).all()
                    items = [r.data if r.data is not None else spilled.spill(s, r.mail_id) for r in rows]
                preps = ahead.prepare(items, [r.envelope_from for r in rows])
            for row, prep in zip(rows, preps, strict=True):
                if row.data is not None:
                    raws[row.mail_id] = row.data
                if prep is not None:
                    prepared[row.mail_id] = prep
            if any(r.data is None for r in rows):
                with self.app.sessions() as s:  # the large ones, now that the worker is done with them
                    for r in rows:
                        raw = rawstore.read_raw(s, r.mail_id) if r.data is None else None
                        if raw is not None:
                            raws[r.mail_id] = raw
        with hold():
            return self.intake.process_many(ids, prepared=prepared, raws=raws, counted=counted, exhausted=exhausted)

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


__all__ = ["Engine", "ImportSource", "ImportStopped", "MAX_TRIES", "start_worker"]
