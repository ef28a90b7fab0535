"""Delivery of the outbox: claim due rows in the database, send them through the relay (or into the local
Maildir), record the result. Idempotent and safe to run from several processes at once.

Claiming: one UPDATE sets a fresh claim token and a lease on rows that are queued, due and not leased by
someone else (PostgreSQL adds FOR UPDATE SKIP LOCKED to the inner SELECT; SQLite serialises writers with
BEGIN IMMEDIATE). Only the holder of the claim token may mark a row sent or failed. A sender that dies after
sending but before recording leaves a lease that expires: the row is sent again with the same bytes and the
same Message-ID (at-least-once; receivers and our own dedupe recognise the repeat).

Building: rows are queued without their bytes (see gateway.outbound.notify). On a row's first claim the
round renders and builds it (gateway.outbound.build), stores the bytes and the subject on the row -- in a
short transaction, guarded by the claim token, *before* sending -- and sends them; every later attempt
sends the stored bytes. A row that cannot be built is marked failed with the reason; the round goes on.
"""

from __future__ import annotations

import contextlib
import logging
import mailbox
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, and_, bindparam, or_, select, update
from sqlalchemy.orm import undefer

from gateway import backoff as _backoff
from gateway.db import is_unavailable, transaction
from gateway.models import OutboxMail, table_of
from gateway.outbound import pipelining

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.host import AppHost
    from gateway.outbound.build import Shared
    from gateway.outbound.notify import Outbound

log = logging.getLogger("gateway.outbound.sender")

Result = tuple[int, str, str | None]  # (outbox id, sent | retry | failed, error)
BUILD_CHUNK = 50  # rows built (and their bytes stored) together, while the chunk before is sent
BUILD_FIRST = 5   # the first chunk of a round


def backoff(attempt: int, base_seconds: float, cap_seconds: float) -> timedelta:
    """Delay after `attempt` failed tries: base * 2**(attempt-1), at most cap (gateway.backoff)."""
    return _backoff.delay(max(1, attempt), base_seconds=base_seconds, factor=2,
                          cap_seconds=max(cap_seconds, base_seconds))


class Temporary(Exception):
    """Try this row again later."""


class Permanent(Exception):
    """Never try this row again."""


class TransportDown(Exception):
    """The relay cannot be reached at all: every row of this round is retried later."""


@dataclass
class Counts:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"claimed": self.claimed, "sent": self.sent, "deferred": self.deferred, "failed": self.failed}

    def add(self, other: Counts) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.deferred += other.deferred
        self.failed += other.failed
        self.errors += other.errors[:10]


# Transports -----------------------------------------------------------------------------------------------
class Transport(Protocol):
    """Sends one mail; raises Permanent, Temporary or TransportDown (or OSError: retried later)."""

    def send(self, envelope_from: str, rcpt: str, raw: bytes) -> str | None: ...

    def close(self) -> None: ...


class MaildirTransport:
    """The embedded default: every mail lands in <data_dir>/outbox-maildir/new, envelope noted on top."""

    def __init__(self, path: Path) -> None:
        self.box = mailbox.Maildir(str(path), create=True)

    def send(self, envelope_from: str, rcpt: str, raw: bytes) -> str:
        head = f"Return-Path: <{envelope_from}>\r\nX-Original-To: {rcpt}\r\n".encode("ascii", "replace")
        key = self.box.add((head + raw).replace(b"\r\n", b"\n"))
        return f"maildir {key}"

    def close(self) -> None:
        pass


class _SMTP(smtplib.SMTP):
    """smtplib keeps no reply of a successful sendmail: remember the answer to DATA (the relay's queue id)."""

    data_reply: tuple[int, bytes] = (0, b"")

    def data(self, msg: Any) -> tuple[int, bytes]:
        reply = super().data(msg)
        self.data_reply = reply
        return reply


class _SMTP_SSL(_SMTP, smtplib.SMTP_SSL):  # MRO: _SMTP, SMTP_SSL, SMTP
    pass


class SMTPTransport:
    """One connection to the relay, reused for every mail while it is open: across the rounds of `serve`
    too (gateway.outbound.feature keeps the transport). A connection idle for a while is checked (NOOP)
    before it is used, and closed (QUIT) after MAX_IDLE seconds without mail."""

    CHECK_AFTER = 2.0
    MAX_IDLE = 60.0

    def __init__(self, cfg: dict[str, Any], base_dir: Path) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self.conn: smtplib.SMTP | None = None
        self.used = 0.0  # time.monotonic() of the last answer on this connection

    def _password(self) -> str:
        p = Path(self.cfg["relay_password_file"])
        if not p.is_absolute():
            p = self.base_dir / p
        try:
            return p.read_text("utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise TransportDown(f"cannot read outbound.relay_password_file {p}: {e}") from e

    def connect(self) -> smtplib.SMTP:
        c = self.cfg
        host, port, timeout = c["relay_host"], c["relay_port"], c["relay_timeout_seconds"]
        try:
            if c["relay_security"] == "tls":
                conn: smtplib.SMTP = _SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
            else:
                conn = _SMTP(host, port, timeout=timeout)
            conn.ehlo_or_helo_if_needed()
            if c["relay_security"] == "starttls":
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if c["relay_user"]:
                conn.login(c["relay_user"], self._password())
        except smtplib.SMTPAuthenticationError as e:
            raise TransportDown(f"relay login failed: {e.smtp_code} {pipelining.text(e.smtp_error)}") from e
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            raise TransportDown(f"relay {host}:{port} unreachable: {type(e).__name__}: {e}") from e
        return conn

    def _usable(self) -> smtplib.SMTP:
        """The open connection when it still answers, else a new one."""
        idle = time.monotonic() - self.used
        if self.conn is not None and idle > self.CHECK_AFTER:
            try:
                alive = idle <= self.MAX_IDLE and self.conn.noop()[0] == 250
            except (OSError, smtplib.SMTPException):
                alive = False
            if not alive:
                self._drop()
        if self.conn is None:
            self.conn = self.connect()
        return self.conn

    def idle_close(self) -> None:
        """Close the connection after MAX_IDLE seconds without mail (called between rounds)."""
        if self.conn is not None and time.monotonic() - self.used > self.MAX_IDLE:
            self.close()

    def send(self, envelope_from: str, rcpt: str, raw: bytes) -> str:
        """Send; returns the relay's answer (e.g. '250 2.0.0 Ok: queued as 4F1...')."""
        self.conn = self._usable()
        try:
            refused = self.conn.sendmail(envelope_from, [rcpt], raw)
        except smtplib.SMTPRecipientsRefused as e:
            code, msg = next(iter(e.recipients.values()), (451, b"refused"))
            _raise_for(code, msg, f"recipient {rcpt} refused")
        except smtplib.SMTPSenderRefused as e:
            _raise_for(e.smtp_code, e.smtp_error, f"sender {envelope_from} refused")
        except smtplib.SMTPDataError as e:
            _raise_for(e.smtp_code, e.smtp_error, "message refused")
        except smtplib.SMTPResponseException as e:
            self._drop()
            _raise_for(e.smtp_code, e.smtp_error, "relay error")
        except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPException) as e:
            self._drop()
            raise TransportDown(f"relay connection lost: {type(e).__name__}: {e}") from e
        self.used = time.monotonic()
        if refused:
            code, msg = next(iter(refused.values()))
            _raise_for(code, msg, f"recipient {rcpt} refused")
        code, msg = getattr(self.conn, "data_reply", (250, b""))
        return f"{code} {pipelining.text(msg)}".strip()

    def send_stream(self, mails: Iterator[pipelining.Mail], done: Callable[[Result], None]) -> bool:
        """Send `mails` pipelined (gateway.outbound.pipelining) when the relay announces PIPELINING, handing each
        result to `done` as the relay answers; False (nothing taken from `mails`) when it does not. Raises
        TransportDown when the connection fails (the mails not answered were reported "retry")."""
        conn = self.conn = self._usable()
        if not pipelining.supported(conn):
            return False
        try:
            pipelining.send_all(conn, mails, done)
        except pipelining.Down as e:
            self._drop()
            raise TransportDown(str(e)) from e
        except BaseException:  # e.g. the store went away between two mails: never leave a transaction open
            self._drop()
            raise
        self.used = time.monotonic()
        return True

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except Exception:  # noqa: BLE001
                pass
            self._drop()


def _raise_for(code: int, msg: bytes | str, what: str) -> None:
    kind, why = pipelining.refusal(code, msg, what)
    raise Permanent(why) if kind == "failed" else Temporary(why)


def make_transport(app: AppHost) -> Transport:
    cfg = app.config.outbound
    if not cfg["relay_host"]:
        return MaildirTransport(app.config.data_dir / "outbox-maildir")
    return SMTPTransport(cfg, app.config.base_dir)


# The delivery round ----------------------------------------------------------------------------------------
def claim(app: AppHost, now: datetime, limit: int) -> tuple[str, list[int]]:
    token = uuid.uuid4().hex
    lease = timedelta(seconds=app.config.outbound["lease_seconds"])
    free = or_(OutboxMail.claimed_until.is_(None), OutboxMail.claimed_until <= now)
    due = and_(OutboxMail.status == "queued", OutboxMail.next_attempt_at <= now, free)
    with transaction(app.sessions) as s:
        inner = select(OutboxMail.id).where(due).order_by(OutboxMail.next_attempt_at, OutboxMail.id).limit(limit)
        if s.bind is not None and s.bind.dialect.name == "postgresql":
            inner = inner.with_for_update(skip_locked=True)
        ids = list(s.scalars(inner))
        if not ids:
            return token, []
        s.execute(update(OutboxMail).where(OutboxMail.id.in_(ids), due)
                  .values(claim_token=token, claimed_until=now + lease, attempts=OutboxMail.attempts + 1)
                  .execution_options(synchronize_session=False))
        got = list(s.scalars(select(OutboxMail.id).where(OutboxMail.claim_token == token)
                             .order_by(OutboxMail.next_attempt_at, OutboxMail.id)))
    return token, got


def _outbound(app: AppHost) -> Outbound:
    """The App's Outbound listener, or one made for building when outbound.enabled was turned off after the
    rows were queued."""
    from gateway.ourmail import reply_secret
    from gateway.outbound.notify import Outbound, notifier_of
    from gateway.outbound.render import Templates

    ob = notifier_of(app)
    if ob is None:
        ob = Outbound(app.config, app.clock, Templates(app.config.notifications["template_dir"] or None),
                      reply_secret(app.config))
    return ob


def build_claimed(app: AppHost, token: str, ids: list[int], notifier: Outbound | None = None,
                  shared: Shared | None = None) -> tuple[dict[int, tuple[str, str, bytes]], list[Result]]:
    """The bytes of claimed rows: stored ones as they are; the others rendered and built now (by `notifier`,
    default: the App's) and stored on the row (only while the claim is ours) before anything is sent.
    Returns ({id: (envelope_from, recipient, raw)}, failures as (id, "failed", reason))."""
    from gateway.outbound.build import Builder, BuildError

    ready: dict[int, tuple[str, str, bytes]] = {}
    failed: list[Result] = []
    built: list[dict[str, Any]] = []
    with app.sessions() as s:
        rows: list[OutboxMail] = []  # read once: the built ones are sent as they are, the others built
        for row in s.scalars(select(OutboxMail).options(undefer(OutboxMail.raw))
                             .where(OutboxMail.id.in_(ids), OutboxMail.claim_token == token).order_by(OutboxMail.id)):
            if row.raw:
                ready[row.id] = (row.envelope_from, row.recipient, row.raw)
            else:
                rows.append(row)
        if rows:
            builder = Builder(notifier or _outbound(app), s, shared)
            builder.prepare(rows)
            for row in rows:
                try:
                    raw, subject = builder.build(row)
                except BuildError as e:
                    failed.append((row.id, "failed", str(e)))
                    continue
                except Exception as e:  # noqa: BLE001 -- one bad row must not stop the round
                    if is_unavailable(e):
                        raise
                    log.exception("outbound: cannot build outbox mail %s", row.id)
                    failed.append((row.id, "failed", f"cannot build the mail: {type(e).__name__}: {e}"))
                    continue
                built.append({"b_id": row.id, "b_token": token, "raw": raw, "subject": subject})
                ready[row.id] = (row.envelope_from, row.recipient, raw)
    if built:
        t = table_of(OutboxMail)
        with transaction(app.sessions) as s:
            s.execute(update(t).where(t.c.id == bindparam("b_id"), t.c.claim_token == bindparam("b_token"))
                      .values(raw=bindparam("raw"), subject=bindparam("subject")), built)
    return ready, failed


def deliver_due(app: AppHost, now: datetime | None = None, *, limit: int | None = None,
                transport: Transport | None = None, notifier: Outbound | None = None) -> Counts:
    """One delivery round: claim what is due at `now` (default: the app's clock), build what was not built
    yet (with `notifier`, default: the App's Outbound listener), send it, record it."""
    now = now or app.clock()
    cfg = app.config.outbound
    limit = limit or cfg["batch_size"]
    token, ids = claim(app, now, limit)
    counts = Counts(claimed=len(ids))
    if not ids:
        return counts
    sending = _Round(app, transport)
    recorder = Recorder(app, token, now, counts)
    rows = _built(app, token, ids, notifier, recorder)
    try:
        sending.send_all(rows, recorder.add_one)  # each mail recorded as the relay answers
    finally:
        rows.close()  # the building thread is done
        sending.close()
        recorder.close()
    target = "outgoing mail (" + (f"relay {cfg['relay_host']}:{cfg['relay_port']}" if cfg["relay_host"]
                                  else "local Maildir") + ")"
    if sending.down:  # one line when it goes down (and when it is back), not one per round
        if not app.observe.state("outgoing mail", False, f"{target}: {sending.down}"):
            log.debug("outbound: still unavailable (%s); %d mail(s) deferred", sending.down, counts.deferred)
    elif counts.sent:
        app.observe.state("outgoing mail", True, target)
    return counts


def _built(app: AppHost, token: str, ids: list[int], notifier: Outbound | None, recorder: Recorder
           ) -> Generator[pipelining.Mail, None, None]:
    """The claimed rows ready to send, in order, built a chunk ahead: the next chunk is rendered, built and
    stored by a thread while this one is sent (the sending thread mostly waits for the relay's answers). A row
    that cannot be built is recorded failed; a row that lost its claim (the lease expired) is left out. Before
    each row: the store is gone (the recorder failed): send no more than can be recorded."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.outbound.build import Shared

    # the copies of one notification are rendered and encoded once (where templates allow); what the chunks
    # load is kept for the round
    shared = Shared(span=(min(ids), max(ids)))
    # a small first chunk: sending starts after a few mails are built, not fifty
    chunks = [ids[:BUILD_FIRST]] + [ids[start:start + BUILD_CHUNK] for start in range(BUILD_FIRST, len(ids),
                                                                                       BUILD_CHUNK)]
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-build") if len(chunks) > 1 else None
    try:
        following = ahead.submit(build_claimed, app, token, chunks[0], notifier, shared) if ahead else None
        for k, chunk in enumerate(chunks):
            if following is not None:
                ready, failed = following.result()
                following = (ahead.submit(build_claimed, app, token, chunks[k + 1], notifier, shared)
                             if ahead is not None and k + 1 < len(chunks) else None)
            else:
                ready, failed = build_claimed(app, token, chunk, notifier, shared)
            recorder.add(failed)
            for row_id in chunk:
                if row_id in ready:
                    recorder.check()
                    yield (row_id, *ready[row_id])
    finally:
        if ahead is not None:
            ahead.shutdown(wait=True, cancel_futures=True)


class _Round:
    """The sending half of a delivery round: one transport (made on first use unless given), and once the
    relay is down, every further row of the round is deferred without trying."""

    def __init__(self, app: AppHost, transport: Transport | None) -> None:
        self.app = app
        self.transport = transport
        self.own = transport is None
        self.down: str | None = None

    def send(self, row_id: int, row: tuple[str, str, bytes]) -> Result:
        if self.down is not None:
            return (row_id, "retry", self.down)
        envelope_from, recipient, raw = row
        try:
            answer = self._transport().send(envelope_from, recipient, raw)
            return (row_id, "sent", answer if isinstance(answer, str) else None)
        except Permanent as e:
            return (row_id, "failed", str(e))
        except Temporary as e:
            return (row_id, "retry", str(e))
        except TransportDown as e:
            self.down = str(e)
        except OSError as e:  # Maildir: disk full and the like
            self.down = f"{type(e).__name__}: {e}"
        return (row_id, "retry", self.down)

    def send_all(self, mails: Iterator[pipelining.Mail], done: Callable[[Result], None]) -> None:
        """Send every mail, handing each result to `done` as soon as it is known: pipelined when the transport
        can (SMTPTransport.send_stream), else one mail at a time; once the relay is down, the rest deferred."""
        stream = getattr(self.transport or self._transport(), "send_stream", None)
        if stream is not None:
            try:
                stream(mails, done)
            except TransportDown as e:
                self.down = str(e)
        for row_id, envelope_from, recipient, raw in mails:  # what the stream left: all, or the rest once down
            done(self.send(row_id, (envelope_from, recipient, raw)))

    def _transport(self) -> Transport:
        if self.transport is None:
            self.transport = make_transport(self.app)
        return self.transport

    def close(self) -> None:
        if self.own and self.transport is not None:
            self.transport.close()


class Recorder:
    """Records each mail's result as soon as it is known, while the next mail is sent: a thread commits what
    has come in since its last commit (group commit: one fsync for the mails accepted meanwhile, and for those
    accepted within LINGER of the first of them, up to MAX_UNRECORDED). At most MAX_UNRECORDED results wait
    besides the batch being committed (then the sender waits for the recorder), so a sender that dies leaves at
    most 2 * MAX_UNRECORDED (+ the one in flight) mails accepted by the relay but not marked sent: those, and
    only those, are sent once more when their lease expires; every other mail was marked sent within LINGER of
    the relay taking it. The recorder is woken by the first result of a batch and by a full batch, not by every
    result. A failing store stops the round (`check` raises): nothing more is sent than can be recorded."""

    MAX_UNRECORDED = 8
    LINGER = 0.05  # seconds a batch waits for more results before its commit

    def __init__(self, app: AppHost, token: str, now: datetime, counts: Counts) -> None:
        import threading

        self.app, self.token, self.now, self.counts = app, token, now, counts
        self.pending: list[Result] = []  # waiting for the next commit
        self.closing = False
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self._threading = threading

    def add(self, results: list[Result]) -> None:
        if not results:
            return
        with self.changed:
            if self.thread is None:
                self.thread = self._threading.Thread(target=self._run, name="outbox-recorder", daemon=True)
                self.thread.start()
            while len(self.pending) >= self.MAX_UNRECORDED:  # the recorder is behind: wait for it
                self.changed.wait()
            first = not self.pending
            self.pending.extend(results)
            if first or len(self.pending) >= self.MAX_UNRECORDED:  # a batch begins (its linger) or is full
                self.changed.notify_all()

    def add_one(self, result: Result) -> None:
        self.add([result])

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                return
            if self.error is None:  # after a failure the rest is dropped: the sender stops at its next check
                try:
                    _record(self.app, self.token, self.now, batch, self.counts)
                except BaseException as e:  # noqa: BLE001 -- raised in the sending thread (check, close)
                    self.error = e

    def _collect(self) -> list[Result]:
        """The next batch: what is waiting, and what comes in within LINGER seconds of its first result, up to
        MAX_UNRECORDED results (one commit for several mails: with pipelining an answer comes every few ms);
        empty when the round is over."""
        with self.changed:
            while not self.pending and not self.closing:
                self.changed.wait()
            deadline = time.monotonic() + self.LINGER
            while self.pending and len(self.pending) < self.MAX_UNRECORDED and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            batch, self.pending = self.pending, []
            self.changed.notify_all()  # a sender waiting for room
            return batch

    def close(self) -> None:
        """Wait until every result is recorded; raises what recording raised."""
        if self.thread is not None:
            with self.changed:
                self.closing = True
                self.changed.notify_all()
            self.thread.join()
            self.thread = None
        self.check()


def _record(app: AppHost, token: str, now: datetime, results: list[Result], counts: Counts) -> None:
    """Record results in one transaction (only for rows whose claim is still `token`'s); then one log line
    and metric per delivery (gateway.observe). The common case, only mails the relay took, is one UPDATE on a
    plain connection (no ORM session: a third of the CPU)."""
    if not results:
        return
    from gateway.observe import Delivery

    answers = {row_id: err for row_id, what, err in results if what == "sent"}
    rest = [r for r in results if r[1] != "sent"]
    done: list[Delivery] = []
    if not rest:
        with app.sessions() as s:
            bind = s.get_bind()
        with (bind.begin() if isinstance(bind, Engine) else contextlib.nullcontext(bind)) as conn:
            done = _mark_sent(conn, token, now, answers)
    else:
        with transaction(app.sessions) as s:
            done = _mark_sent(s.connection(), token, now, answers) if answers else []
            done += _record_unsent(app, s, token, now, rest, counts)
    counts.sent += sum(1 for d in done if d.result == "sent")
    results.clear()
    for d in done:  # once committed: one line per delivery (gateway.observe)
        app.observe(d)


def _mark_sent(conn: Connection, token: str, now: datetime, answers: dict[int, str | None]) -> list[Any]:
    """One UPDATE for every mail the relay took (whose claim is still `token`'s)."""
    from gateway.observe import Delivery

    t = table_of(OutboxMail)
    return [Delivery(row_id, rcpt, event, "sent", answers[row_id]) for row_id, rcpt, event in conn.execute(
        update(t).where(t.c.id.in_(list(answers)), t.c.claim_token == token)
        .values(status="sent", sent_at=now, next_attempt_at=None, claim_token=None, claimed_until=None)
        .returning(t.c.id, t.c.recipient, t.c.event))]


def _record_unsent(app: AppHost, s: Any, token: str, now: datetime, results: list[Result], counts: Counts
                   ) -> list[Any]:
    """Failed (never again) and deferred (retried with backoff, until outbound.give_up_hours) rows."""
    from gateway.observe import Delivery

    cfg = app.config.outbound
    give_up = timedelta(hours=cfg["give_up_hours"])
    done: list[Delivery] = []
    rows = {r.id: r for r in s.scalars(select(OutboxMail).where(
        OutboxMail.id.in_([i for i, _, _ in results]), OutboxMail.claim_token == token))}
    for row_id, what, err in results:
        row = rows.get(row_id)
        if row is None:
            continue
        row.claim_token = None
        row.claimed_until = None
        if what == "failed":
            row.status = "failed"
            row.last_error = err
            row.next_attempt_at = None
            counts.failed += 1
            counts.errors.append(f"outbox {row_id}: {err}")
        elif now - row.created_at >= give_up:
            row.status = "failed"
            row.last_error = f"gave up after {row.attempts} attempts over {cfg['give_up_hours']} hours: {err}"
            row.next_attempt_at = None
            counts.failed += 1
        else:
            row.last_error = err
            row.next_attempt_at = now + backoff(row.attempts, cfg["retry_base_seconds"], cfg["retry_max_seconds"])
            counts.deferred += 1
        done.append(Delivery(row.id, row.recipient, row.event, row.status if row.status == "failed" else "deferred",
                             err if row.status != "failed" else row.last_error))
    return done


def flush(app: AppHost, now: Callable[[], datetime] | None = None, *, max_rounds: int = 10_000) -> Counts:
    """Deliver until nothing is due any more (`outbox flush`). Runs the full template check first (once
    per process): a broken template stops here, like at the start of `serve`."""
    from gateway.outbound.check import check_app_templates

    check_app_templates(app, force=True)
    notifier = _outbound(app)  # made once, when outbound.enabled is off: compiles the templates once
    total = Counts()
    transport = make_transport(app)  # one relay connection for every round
    try:
        for _ in range(max_rounds):
            c = deliver_due(app, (now or app.clock)(), notifier=notifier, transport=transport)
            total.add(c)
            if c.claimed == 0 or c.sent + c.failed == 0:
                break
    finally:
        transport.close()
    return total


def retry(app: AppHost, outbox_id: int) -> OutboxMail:
    """Queue a failed (or deferred, or suppressed) mail again, due now."""
    with transaction(app.sessions) as s:
        row = s.get(OutboxMail, outbox_id)
        if row is None:
            raise KeyError(f"no outbox mail {outbox_id}")
        if row.status == "sent":
            raise ValueError(f"outbox mail {outbox_id} was already sent on {row.sent_at}")
        if row.status == "suppressed":
            raise ValueError(f"outbox mail {outbox_id} was suppressed when it was queued ({row.last_error})")
        row.status = "queued"
        row.next_attempt_at = app.clock()
        row.claim_token = None
        row.claimed_until = None
        row.created_at = app.clock()  # outbound.give_up_hours counts again from now
        row.last_error = (row.last_error + "; " if row.last_error else "") + "retry requested"
        s.flush()
        return row

