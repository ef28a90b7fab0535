"""The one door: every transport (SMTP, LMTP, IMAP, stdin, files) hands raw bytes and an envelope here.

`store()` writes the raw mail durably and commits: only then may a transport say yes (250, or move the IMAP
message). `process()` runs the pipeline over a stored mail in one write transaction and records the outcome;
it is idempotent (a processed mail returns its recorded result), so a crash between the two steps is
recovered by `process_pending()`.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import object_session

from gateway.db import StoreUnavailable, is_conflict, is_unavailable, transaction
from gateway.envelope import Envelope  # a leaf module; importable from here too
from gateway.events import MailRejected
from gateway.models import InboundMail, InboundRaw, Ticket
from gateway.outcomes import Quarantine
from gateway.pipeline import Decision, MailContext, declared, run
from gateway.replywait import retry_after
from gateway.store.ahead import Ahead
from gateway.store.base import Upcoming
from gateway.store.sql import (
    SqlStore,
    claims_due,
    flush_row,
    insert_raw,
    insert_row,
    made_written,
    preallocated_mail_id,
    prefetch,
)

if TYPE_CHECKING:
    from gateway.host import IntakeHost

log = logging.getLogger("gateway.intake")
T = TypeVar("T")


@dataclass
class Result:
    mail_id: int
    outcome: str
    reason: str | None = None
    ticket_number: int | None = None
    comment_id: int | None = None
    trace: list[str] = field(default_factory=list)
    # for the log line and the metrics (gateway.observe.MailDone)
    transport: str = ""
    sender: str | None = None
    message_id: str | None = None
    latency: float | None = None  # seconds from storing to the outcome
    fresh: bool = False           # the outcome was decided now (not a recorded one read again)
    retry_in: float | None = None  # the mail waits for another (outcome 'received'): try again in this many seconds

    def as_dict(self) -> dict[str, Any]:
        return {"mail_id": self.mail_id, "outcome": self.outcome, "reason": self.reason,
                "ticket": self.ticket_number, "comment_id": self.comment_id, "trace": self.trace}


HINT_HEAD = 256 * 1024  # bytes of header read for a listing hint (`_header_summary`)


def _header_summary(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """Best-effort (message_id, sender, subject) for listings; the pipeline fills in the parsed values."""
    try:
        # the header ends at the first empty line, LF or CRLF (mail over SMTP has CRLF line ends: looking for
        # LF LF only, the parser was given the whole body of such a mail too); only HINT_HEAD bytes are looked at
        ends = [e for e in (raw.find(b"\n\n", 0, HINT_HEAD + 1), raw.find(b"\r\n\r\n", 0, HINT_HEAD + 3)) if e >= 0]
        head = raw[: min(ends) if ends and min(ends) < HINT_HEAD else HINT_HEAD]
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)

        def clean(v: Any) -> str | None:
            if v is None:
                return None
            s = str(v).replace("\r", " ").replace("\n", " ").strip()
            return s.encode("utf-8", "replace").decode("utf-8")[:998] or None

        return clean(msg.get("Message-ID")), clean(msg.get("From")), clean(msg.get("Subject"))
    except Exception:  # noqa: BLE001 -- a listing hint only
        return None, None, None


def envelope_of(mail: InboundMail) -> Envelope:
    """The envelope a stored mail came with."""
    return Envelope(mail_from=mail.envelope_from, rcpt_tos=tuple(mail.envelope_to or ()), source=mail.source,
                    source_ref=mail.source_ref, client_ip=mail.client_ip, client_helo=mail.client_helo,
                    auth=mail.auth)


def _session(ctx: MailContext) -> Any:
    """The session of a mail's store (the intake's are gateway.store.sql.SqlStore)."""
    assert isinstance(ctx.store, SqlStore)
    return ctx.store.session


class Intake:
    def __init__(self, app: IntakeHost) -> None:
        self.app = app
        self.handlers = app.handlers
        self._hint_deferred: weakref.WeakSet[InboundMail] = weakref.WeakSet()  # rows whose hint `_record` makes

    # Step 1: durable ---------------------------------------------------------------
    def _new_row(self, raw: bytes, envelope: Envelope, *, with_raw: bool = True, hint: bool = True,
                 sha256: str | None = None) -> InboundMail:
        """hint=False: the listing hint (Message-ID, sender, subject from a header-only parse) is left to
        `_record`, which needs it only where the pipeline's parse found no value (a row that nobody sees before
        the pipeline ran: the batch path)."""
        mid, sender, subject = _header_summary(raw) if hint else (None, None, None)
        mail = InboundMail(received_at=self.app.clock(), source=envelope.source, source_ref=envelope.source_ref,
                           envelope_from=envelope.mail_from, envelope_to=list(envelope.rcpt_tos),
                           message_id=mid, sender=sender[:320] if sender else None, subject=subject,
                           sha256=sha256 or hashlib.sha256(raw).hexdigest(), size=len(raw), outcome="received",
                           trace=[], attempts=0, client_ip=envelope.client_ip,
                           client_helo=envelope.client_helo, auth=envelope.auth)
        if not hint:
            self._hint_deferred.add(mail)
        if with_raw:
            mail.raw = InboundRaw(data=raw)
        return mail

    def store(self, raw: bytes, envelope: Envelope) -> int:
        """Write the raw mail and commit. Raises StoreUnavailable when it could not be stored."""
        return self.store_many([(raw, envelope)])[0]

    def store_many(self, items: list[tuple[bytes, Envelope]]) -> list[int]:
        """Several mails in one transaction (group commit): one fsync for all. All or none are stored."""
        # plain INSERTs, the rows written as a flush would write them (nothing reads them back in this transaction;
        # the unit of work cost several times the INSERTs); a large mail's raw bytes go through gateway.store.raw
        # (no copies of it in SQLite)
        mails = [self._new_row(raw, env, with_raw=False) for raw, env in items]
        try:
            with transaction(self.app.sessions) as s:
                for m, (raw, _) in zip(mails, items, strict=True):
                    insert_row(s, m, given_only=True)
                    insert_raw(s, m.id, raw)
                return [m.id for m in mails]
        except Exception as e:
            if is_unavailable(e):
                raise StoreUnavailable(str(e)) from e
            raise

    # Step 2: thread ----------------------------------------------------------------
    def process(self, mail_id: int) -> Result:
        """Thread a stored mail; a mail already processed returns its recorded result."""
        results = self.process_many([mail_id])
        if not results:
            raise KeyError(f"no inbound mail {mail_id}")
        return results[0]

    def process_many(self, mail_ids: Sequence[int], *, prepared: Mapping[int, Any] | None = None,
                     raws: Mapping[int, bytes] | None = None, counted: bool = False,
                     exhausted: set[int] | None = None, skip_locked: bool = False) -> list[Result]:
        """Thread several stored mails in ONE write transaction (one commit), a savepoint each, in the order
        given; the lookups their handlers declared are made ahead for all of them (gateway.store.sql.prefetch)
        when their preparation is there. prepared: mail id -> gateway.prepare.Prepared (the pure work done ahead, in
        the worker process); raws: mail id -> raw bytes the caller already holds. A mail already processed
        returns its recorded result; an unknown id is left out. counted: this try is already counted on the
        rows (`thread`); exhausted: mails quarantined without running (no outcome after MAX_TRIES tries).
        skip_locked (PostgreSQL): a mail whose row another transaction holds (another instance threads it now) is
        left out, not waited for."""
        started = time.perf_counter()
        ids = list(dict.fromkeys(mail_ids))
        what = f"mail {ids[0]}" if len(ids) == 1 else f"{len(ids)} mails from {ids[0] if ids else '-'}"
        results = self._retrying(lambda: self._process_stored(ids, prepared or {}, raws or {}, counted,
                                                              exhausted or set(), skip_locked), what)
        return [self._observed(r, started) for r in results]

    def _observed(self, result: Result, started: float) -> Result:
        """A committed outcome decided now: its log line and metrics (gateway.observe)."""
        if result.fresh and result.mail_id:
            from gateway.observe import MailDone

            self.app.observe(MailDone(result.mail_id, result.transport, result.sender, result.message_id,
                                      result.outcome, result.ticket_number, result.reason,
                                      (time.perf_counter() - started) * 1000, result.latency))
        return result

    def ingest(self, raw: bytes, envelope: Envelope, *, dry_run: bool = False, durable_first: bool = True,
               prepared: Any = None) -> Result:
        """Store and thread one mail. durable_first=True commits the raw mail on its own first (a transport
        that must answer quickly threads later); False does both in one transaction, for sources that keep
        the mail until we return (files, an MTA pipe waiting for the exit code): one commit instead of two.
        prepared: the mail's preparation done by the worker process (gateway.prepare), or None."""
        if dry_run:
            return self._retrying(lambda: self._run_new(raw, envelope, dry_run=True, prepared=prepared), "dry run")
        if durable_first:
            return self.process(self.store(raw, envelope))
        started = time.perf_counter()
        return self._observed(self._retrying(lambda: self._run_new(raw, envelope, dry_run=False, prepared=prepared),
                                             "mail"), started)

    def batch(self) -> IngestBatch:
        """Several mails stored and threaded in ONE write transaction (one commit, one fsync), each in its own
        savepoint. Only for sources that keep every mail until the commit returned (files, Maildirs, mboxes):
        nothing of the batch is stored before `commit()`, and a crash before it loses nothing but the work."""
        return IngestBatch(self)

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        for attempt in range(5):
            try:
                return fn()
            except IntegrityError:
                # a concurrent delivery of the same mail won the dedupe claim: run again, see the duplicate
                log.info("%s: conflict with a concurrent writer, running again", what)
                if attempt == 4:
                    raise
            except StoreUnavailable:
                raise
            except Exception as e:
                if is_conflict(e) and attempt < 4:
                    # a deadlock with another instance's transaction (PostgreSQL chose this one): run it again
                    # now, not after the pending sweep
                    log.info("%s: %s, running again", what, type(getattr(e, "orig", e)).__name__)
                    continue
                if is_unavailable(e):
                    raise StoreUnavailable(str(e)) from e
                raise
        raise AssertionError("unreachable")

    def _context(self, session: Any, mail: InboundMail, raw: bytes, dry_run: bool, prepared: Any = None,
                 envelope: Envelope | None = None) -> MailContext:
        """envelope: the new mail's (an import of old mail is dated by its Date and may mail nobody); None for a
        stored mail threaded later, which is live mail."""
        app = self.app
        historic = envelope is not None and envelope.historic
        quiet = envelope is not None and envelope.quiet
        store = SqlStore(session, config=app.config, clock=app.clock, listeners=app.listeners, blobs=app.blobs,
                         imported=historic, quiet=quiet, dry_run=dry_run)
        return MailContext(store=store, config=app.config, clock=app.clock, mail=mail, raw=raw,
                           ahead=Ahead(prepared), dry_run=dry_run, trace=list(mail.trace or []), historic=historic,
                           may_wait=envelope is None and not dry_run)

    def prefetch(self, session: Any, items: list[tuple[Envelope, Any]],
                 received: Sequence[Any] | None = None) -> None:
        """Before running these mails (envelope, Prepared or None): make the lookups their handlers will make,
        a few queries for all of them instead of a few for each (what the handlers declare: gateway.pipeline.
        declared; looked up by gateway.store.sql.prefetch). Saves time, changes no outcome: what it finds is what
        each handler's own query would find. received: when each of these mails was stored (stored mail)."""
        app = self.app
        when = list(received) if received is not None else [None] * len(items)
        upcoming = [Upcoming(prep.parsed, prep.sha256, envelope.mail_from, at)
                    for (envelope, prep), at in zip(items, when, strict=True)
                    if getattr(prep, "parsed", None) is not None and prep.sha256 is not None]
        if not upcoming:
            return
        try:
            prefetch(session, declared(self.handlers, upcoming, app.config), app.listeners)
        except Exception as e:
            if is_unavailable(e):
                raise StoreUnavailable(str(e)) from e
            raise

    def _process_stored(self, ids: list[int], prepared: Mapping[int, Any], raws: Mapping[int, bytes],
                        counted: bool, exhausted: set[int], skip_locked: bool = False) -> list[Result]:
        with self.app.sessions() as s:
            with s.begin():
                q = select(InboundMail).where(InboundMail.id.in_(ids)).order_by(InboundMail.id)
                if s.bind is not None and s.bind.dialect.name == "postgresql":
                    q = q.with_for_update(skip_locked=skip_locked)
                mails = {m.id: m for m in s.scalars(q)}
                todo = [m for m in mails.values() if m.outcome == "received"]
                if len(todo) > 1 and any(prepared.get(m.id) is not None for m in todo):
                    self.prefetch(s, [(envelope_of(m), prepared.get(m.id)) for m in todo],
                                  [m.received_at for m in todo])
                out = []
                waiting: list[int] = []  # indexes in `out` of the mails that wait for another (the `wait` handler)
                for mail_id in ids:
                    mail = mails.get(mail_id)
                    if mail is None:
                        continue
                    if mail.outcome != "received":
                        out.append(self._result(mail))
                        continue
                    if mail_id in exhausted:
                        out.append(self._give_up(s, mail))
                        continue
                    out.append(self._run_stored(s, mail, raws, prepared, counted))
                    if out[-1].retry_in is not None:
                        waiting.append(len(out) - 1)
                # a reply that waited for its original threaded later in this batch: once more, after it
                if waiting and any(r.fresh and r.outcome in ("ticket", "comment") for r in out):
                    for k in waiting:  # (its try, given back when it waited, counted again)
                        out[k] = self._run_stored(s, mails[out[k].mail_id], raws, prepared, counted=False)
                return out

    def _run_stored(self, s: Any, mail: InboundMail, raws: Mapping[int, bytes], prepared: Mapping[int, Any],
                    counted: bool) -> Result:
        raw = raws.get(mail.id)
        return self._run(s, mail, mail.raw.data if raw is None else raw, dry_run=False, prepared=prepared.get(mail.id),
                         counted=counted)

    def _run_new(self, raw: bytes, envelope: Envelope, *, dry_run: bool, prepared: Any = None) -> Result:
        with self.app.sessions() as s:
            s.begin()
            try:
                mail = self._new_row(raw, envelope)
                s.add(mail)
                s.flush()
                result = self._run(s, mail, raw, dry_run=dry_run, prepared=prepared, envelope=envelope)
                if dry_run:
                    result.mail_id = 0
                    s.rollback()
                else:
                    s.commit()
                return result
            except BaseException:
                s.rollback()
                raise

    def _give_up(self, s: Any, mail: InboundMail) -> Result:
        """A mail that got no outcome in MAX_TRIES tries (each ended with the process): quarantined unrun."""
        ctx = self._context(s, mail, b"", False)
        ctx.note(f"no outcome after {mail.attempts - 1} tries: the processing of this mail ended with the process")
        self._settle(ctx, s, s.begin_nested(), Decision("quarantined", f"over budget: no outcome after "
                                                                   f"{mail.attempts - 1} tries", keep=False))
        return self._result(mail, fresh=True)

    def _run(self, s: Any, mail: InboundMail, raw: bytes, *, dry_run: bool, prepared: Any = None,
             counted: bool = False, envelope: Envelope | None = None) -> Result:
        """The pipeline over one written mail row, inside the caller's transaction, in a savepoint: an outcome
        that keeps nothing (reject, quarantine) rolls back what the handlers did and keeps the mail row."""
        ctx = self._context(s, mail, raw, dry_run, prepared, envelope)
        if not counted:
            mail.attempts += 1
        sp = s.begin_nested()
        try:
            decision = run(ctx, self.handlers)
        except BaseException:
            sp.rollback()
            raise
        self._settle(ctx, s, sp, decision)
        result = self._result(mail, fresh=not decision.wait)
        if decision.wait:
            age = (self.app.clock() - mail.received_at).total_seconds()
            result.retry_in = retry_after(age, self.app.config.gateway["reply_wait_seconds"])
        return result

    def _run_batched(self, s: Any, raw: bytes, envelope: Envelope, prepared: Any = None) -> Result:
        """`_run` for a new mail inside an IngestBatch: the mail row, what the handlers write and the raw
        bytes go into ONE savepoint. An outcome that keeps nothing (duplicate, reject, quarantine, a failing
        handler) rolls the savepoint back and writes the mail row again, with its outcome, in a fresh one;
        the result is what `_run` records. Any exception that escapes has rolled the savepoint back."""
        sha = prepared.sha256 if prepared is not None else None  # hashed ahead by the worker
        mail = self._new_row(raw, envelope, with_raw=False, hint=False, sha256=sha)
        mail.attempts = 1
        sp = s.begin_nested()
        try:
            mail.id = preallocated_mail_id(s)  # type: ignore[assignment]  # None: the database assigns it
            if mail.id is None:
                s.add(mail)  # written with its ticket or comment, on first use of ctx.mail_id, or by _record
            # else: added by _record (one INSERT with the outcome), on first use of ctx.mail_id, or with a comment
            ctx = self._context(s, mail, raw, False, prepared, envelope)
            mail = self._settle(ctx, s, sp, run(ctx, self.handlers), envelope=envelope)
        except BaseException:
            if sp.is_active:
                sp.rollback()
            raise
        return self._result(mail, ctx.ticket, fresh=True)

    def _settle(self, ctx: MailContext, s: Any, sp: Any, decision: Decision, *,
                envelope: Envelope | None = None) -> InboundMail:
        """The one place where a Decision takes effect, for every path: what the handlers wrote is kept (the
        savepoint `sp` is released) or rolled back, the outcome is recorded on the mail row, listeners hear of
        a rejection, a temporary condition raises StoreUnavailable (the mail stays as it was).

        envelope: a new mail of a batch whose row was written inside `sp` (its raw bytes too): when nothing is
        kept, the row is written again, with its outcome, in a fresh savepoint. Returns the mail row."""
        if decision.retry:
            sp.rollback()
            raise StoreUnavailable(decision.reason or "try again later")
        if decision.wait:  # threaded again later (a stored mail: its row was written before the savepoint)
            sp.rollback()
            mail = ctx.mail
            mail.attempts = max(0, (mail.attempts or 0) - 1)  # waiting is not a try (engine.MAX_TRIES)
            mail.reason = decision.reason
            mail.trace = list(mail.trace or []) + [f"wait: {decision.reason}"]
            s.flush()
            log.info("mail %s: %s", mail.id, decision.reason)
            return mail
        if decision.keep:
            self._record(ctx, decision.outcome, decision.reason)
            if envelope is not None:
                insert_raw(s, ctx.mail.id, ctx.raw)
            sp.commit()
            return ctx.mail
        sp.rollback()
        if envelope is None:  # the mail row was written before the savepoint: it stays
            self._record(ctx, decision.outcome, decision.reason)
            if decision.rejected:
                ctx.store.emit(MailRejected(ctx.mail.id, ctx.sender_email, decision.reason or ""))
            return ctx.mail
        mail = self._new_row(ctx.raw, envelope, with_raw=False, hint=False, sha256=ctx.mail.sha256)
        mail.attempts = 1
        mail.trace = []
        with s.begin_nested():
            mail.id = preallocated_mail_id(s)  # type: ignore[assignment]  # None: the database assigns it
            s.add(mail)
            s.flush()
            ctx.mail = mail
            ctx.ticket = None
            ctx.comment = None
            self._record(ctx, decision.outcome, decision.reason)
            if decision.rejected:
                ctx.store.emit(MailRejected(mail.id, ctx.sender_email, decision.reason or ""))
            insert_raw(s, mail.id, ctx.raw)
        return mail

    def _record(self, ctx: MailContext, outcome: str, reason: str | None) -> None:
        mail = ctx.mail
        p = ctx.parsed
        s = _session(ctx)
        claims_due(s, mail)  # the dedupe claims kept aside for this UPDATE (gateway.store.sql.defer_claims)
        if mail in self._hint_deferred:  # its listing hint was left to here (`_new_row(hint=False)`)
            self._hint_deferred.discard(mail)
            if p is None or not p.message_id or not (ctx.sender_email or p.from_addr) or not p.subject:
                mid, sender, subject = _header_summary(ctx.raw)
                mail.message_id, mail.sender, mail.subject = mid, sender[:320] if sender else None, subject
        if p is not None:
            mail.message_id = p.message_id or mail.message_id
            mail.sender = (ctx.sender_email or p.from_addr or mail.sender or None)
            mail.subject = p.subject or mail.subject
        if outcome not in ("ticket", "comment", "ignored", "duplicate"):
            # nothing was produced: release the dedupe claims (rolled back with the savepoint anyway)
            mail.claim_sha256 = None
            mail.claim_msgid = None
        if outcome in ("ticket", "comment") and ctx.ticket is not None:
            mail.ticket_id = ctx.ticket.id
            mail.comment_id = ctx.comment.id if ctx.comment is not None else None
        elif outcome == "ignored" and ctx.ticket is not None:
            mail.ticket_id = ctx.ticket.id
        else:
            mail.ticket_id = None if outcome in ("quarantined", "rejected") else mail.ticket_id
        mail.outcome = outcome
        mail.reason = reason
        ctx.note(f"outcome: {outcome}" + (f" ({reason})" if reason else ""))
        mail.trace = list(ctx.trace)
        mail.processed_at = self.app.clock()
        if inspect(mail).transient:  # a batch import's row with a preallocated id: written now, once, as a plain
            # row (nothing reads it back in this transaction; the object stays outside the session)
            insert_row(s, mail)
        else:
            flush_row(s, mail)  # the flush; one plain UPDATE when only this row changed
        made_written(s, mail)

    @staticmethod
    def _result(mail: InboundMail, ticket: Ticket | None = None, *, fresh: bool = False) -> Result:
        """ticket: the mail's ticket when the caller has it (a batch import's mail row is outside the session).
        fresh: the outcome was decided now (it gets a log line once committed)."""
        number = None
        s = object_session(mail)
        if ticket is not None and ticket.id == mail.ticket_id:
            number = ticket.number
        elif mail.ticket_id is not None and s is not None:
            t = s.get(Ticket, mail.ticket_id)
            number = t.number if t else None
        latency = None
        if mail.processed_at is not None and mail.received_at is not None:
            latency = max(0.0, (mail.processed_at - mail.received_at).total_seconds())
        return Result(mail.id, mail.outcome, mail.reason, number, mail.comment_id, list(mail.trace or []),
                      transport=mail.source, sender=mail.sender, message_id=mail.message_id, latency=latency,
                      fresh=fresh)

    # Recovery and replay -------------------------------------------------------------
    def pending(self, *, older_than: timedelta = timedelta(0), limit: int = 100) -> list[int]:
        cutoff = self.app.clock() - older_than
        with self.app.sessions() as s:
            return list(s.scalars(select(InboundMail.id).where(InboundMail.outcome == "received",
                                                               InboundMail.received_at <= cutoff)
                                  .order_by(InboundMail.id).limit(limit)))

    def process_pending(self, *, older_than: timedelta = timedelta(0), limit: int = 100) -> int:
        """Thread every stored mail that was not processed yet (after a crash, or an outage)."""
        done = 0
        for mail_id in self.pending(older_than=older_than, limit=limit):
            self.process(mail_id)
            done += 1
        return done

    def replay(self, mail_id: int) -> Result:
        """Run a quarantined (or rejected) mail through the pipeline again."""
        with transaction(self.app.sessions) as s:
            mail = s.get(InboundMail, mail_id)
            if mail is None:
                raise KeyError(f"no inbound mail {mail_id}")
            if mail.outcome not in ("quarantined", "rejected", "received"):
                raise ValueError(f"mail {mail_id} is {mail.outcome}; only quarantined or rejected mail is replayed")
            previous = mail.outcome
            if previous == "quarantined" and mail.reason:
                # the admin accepts what held it back ('flood', 'sender authentication failed'): not again
                mail.released = list(mail.released or []) + [mail.reason.partition(":")[0]]
            mail.outcome = "received"
            mail.trace = list(mail.trace or []) + [f"replay requested (was {previous}: {mail.reason})"]
        return self.process(mail_id)  # an admin's decision: run it, whatever its tries


class IngestBatch:
    """One write transaction over several new mails (see `Intake.batch`). Use:

        b = intake.batch()
        try:
            results = [b.ingest(raw, env) for raw, env in mails]   # not yet durable
            b.commit()                                              # now they are
        finally:
            b.close()                                               # rolls back what was not committed

    Each mail runs in a savepoint: an outcome, a pipeline failure (quarantine) or a conflict with a
    concurrent writer (run again) concerns that mail alone. A mail whose row cannot even be written is
    stored quarantined without its pipeline. StoreUnavailable (the store is down or full) ends the batch:
    the caller closes it (rolled back) and answers "try again later"."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.session = intake.app.sessions()
        self.session.begin()
        self.count = 0
        self.size = 0
        self.started = time.monotonic()
        self._open = True
        self._done: list[tuple[Result, float]] = []  # (result, seconds): logged and counted once committed

    def ingest(self, raw: bytes, envelope: Envelope, prepared: Any = None) -> Result:
        """prepared: the pure work for this mail done ahead (gateway.prepare.Prepared), or None."""
        if not self._open:
            raise RuntimeError("batch already committed or closed")
        s = self.session
        self.count += 1
        self.size += len(raw)
        started = time.perf_counter()
        for attempt in range(5):
            try:
                result = self.intake._run_batched(s, raw, envelope, prepared)  # rolled back when it raises
                self._done.append((result, time.perf_counter() - started))
                return result
            except IntegrityError:
                log.info("mail: conflict with a concurrent writer, running again")
                if attempt == 4:
                    raise
            except StoreUnavailable:
                raise
            except Exception as e:
                if is_unavailable(e):
                    raise StoreUnavailable(str(e)) from e
                log.exception("mail could not be stored with its outcome; storing it quarantined")
                result = self._quarantined(s, raw, envelope, e)
                self._done.append((result, time.perf_counter() - started))
                return result
        raise AssertionError("unreachable")

    def prefetch(self, items: list[tuple[Envelope, Any]]) -> None:
        """The lookups of the next mails made ahead (see `Intake.prefetch`)."""
        self.intake.prefetch(self.session, items)

    def _quarantined(self, s: Any, raw: bytes, envelope: Envelope, exc: Exception) -> Result:
        with s.begin_nested():
            mail = self.intake._new_row(raw, envelope, with_raw=False)
            mail.outcome = "quarantined"
            mail.reason = f"internal error while storing: {type(exc).__name__}: {exc}"[:2000]
            mail.trace = [f"outcome: quarantined ({mail.reason})"]
            mail.attempts = 1
            mail.processed_at = self.intake.app.clock()
            mail.id = preallocated_mail_id(s)  # type: ignore[assignment]
            s.add(mail)
            s.flush()
            insert_raw(s, mail.id, raw)
        return Result(mail.id, mail.outcome, mail.reason, None, None, list(mail.trace), transport=mail.source,
                      sender=mail.sender, message_id=mail.message_id, latency=0.0, fresh=True)

    def age(self) -> float:
        return time.monotonic() - self.started

    def commit(self) -> None:
        """Make every mail of the batch durable (one commit). Raises StoreUnavailable when it failed."""
        if not self._open:
            raise RuntimeError("batch already committed or closed")
        try:
            self.session.commit()
        except Exception as e:
            self.close()
            if is_unavailable(e):
                raise StoreUnavailable(str(e)) from e
            raise
        self._open = False
        self.session.close()
        done, self._done = self._done, []
        for result, elapsed in done:  # the time each mail took, not the batch's
            self.intake._observed(result, time.perf_counter() - elapsed)

    def close(self) -> None:
        """Roll back whatever was not committed."""
        if self._open:
            self._open = False
            try:
                self.session.rollback()
            finally:
                self.session.close()


__all__ = ["Envelope", "IngestBatch", "Intake", "Result", "StoreUnavailable", "Quarantine"]
