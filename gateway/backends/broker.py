"""The broker: delivers the push queue to the desk and brings the desk's changes back.

Asynchronous (httpx) against the desk; the database steps are short synchronous transactions run through
`run` (in `serve`: the service's thread pool behind its write gate; elsewhere: asyncio.to_thread), so the
event loop never waits on the database or the desk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gateway.backends import queue
from gateway.backends.desk import (
    Blocked,
    Desk,
    DeskDown,
    NewRequest,
    NotFound,
    Pending,
    RateLimited,
    Rejected,
    RemoteRef,
    RemoteTicket,
    TooLarge,
)
from gateway.backends.settings import Settings
from gateway.backends.store import BackendCustomer, BackendItem, BackendLink, BackendPush, BackendState
from gateway.db import transaction
from gateway.guard.relay import mailable
from gateway.models import Attachment, Comment, Ticket

log = logging.getLogger("gateway.backends")

Run = Callable[..., Awaitable[Any]]
PENDING_RETRY = timedelta(seconds=15)
PERSON_CREATE_AGAIN = timedelta(minutes=10)
MAX_POLL_PAGES = 10
MAX_COMMENTS = 500
MAX_REFRESH = 50


@dataclass
class Counts:
    claimed: int = 0
    done: int = 0
    deferred: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, "done": self.done, "deferred": self.deferred, "failed": self.failed}


@dataclass
class Job:
    row_id: int
    op: str
    attempts: int
    params: dict[str, Any]
    ticket_id: int
    number: int
    ref: str
    remote_key: str | None
    customer_id: str | None
    subject: str = ""
    description: str = ""
    type: str = ""
    priority: str = ""
    reporter: tuple[str, str] = ("", "")
    watchers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    internal: bool = False
    attachment: tuple[str, str, int, str] | None = None  # filename, content type, size, sha256


class Stop(Exception):
    """End this delivery round (the desk is down or asked us to wait); the row's fate is already recorded."""


class Broker:
    def __init__(self, app: Any, settings: Settings, desk: Desk, run: Run | None = None) -> None:
        self.app = app
        self.settings = settings
        self.desk = desk
        self.run: Run = run or _to_thread

    @property
    def name(self) -> str:
        return self.settings.name

    # Delivery -----------------------------------------------------------------------------------------
    async def flush(self, max_rounds: int = 1000) -> Counts:
        """Deliver until nothing is due (`backend flush`)."""
        total = Counts()
        for _ in range(max_rounds):
            c = await self.deliver_due()
            for k in ("claimed", "done", "deferred", "failed"):
                setattr(total, k, getattr(total, k) + getattr(c, k))
            total.errors += c.errors[:10]
            if c.claimed == 0 or c.done + c.failed == 0:
                break
        return total

    async def deliver_due(self, now: datetime | None = None) -> Counts:
        now = now or self.app.clock()
        counts = Counts()
        paused = await self.run(self._paused_until, now)
        if paused is not None:
            counts.errors.append(f"the desk asked us to wait until {paused.isoformat()}")
            return counts
        token, ids = await self.run(queue.claim, self.app.sessions, self.settings, now, self.settings.batch_size)
        counts.claimed = len(ids)
        for i, row_id in enumerate(ids):
            try:
                await self._deliver_one(row_id, token, now, counts)
            except Stop as e:
                at = e.args[0] or now + timedelta(seconds=self.settings.retry_base)
                await self.run(queue.release, self.app.sessions, token, ids[i + 1:], at, e.args[1])
                counts.deferred += len(ids) - i - 1
                break
        return counts

    async def _deliver_one(self, row_id: int, token: str, now: datetime, counts: Counts) -> None:
        job = await self.run(self._load, row_id, token)
        if job is None:
            return
        try:
            result = await self._perform(job)
        except RateLimited as e:
            until = now + timedelta(seconds=e.retry_after)
            await self.run(self._outcome, job, token, now, "defer", str(e), until)
            await self.run(self._pause, until, str(e))
            counts.deferred += 1
            log.warning("backend %s: rate limited, waiting %.0f s (Retry-After)", self.name, e.retry_after)
            raise Stop(until, f"waiting for the desk (429) until {until.isoformat()}") from None
        except Pending as e:
            await self.run(self._outcome, job, token, now, "defer", str(e), now + PENDING_RETRY)
            counts.deferred += 1
            return
        except Blocked as e:
            await self.run(self._outcome, job, token, now, "defer", str(e), None)
            counts.deferred += 1
            return
        except TooLarge as e:
            if job.op == "attachment":
                await self.run(self._too_big, job, token, now, f"the desk refused it ({e})")
                counts.done += 1
                return
            await self.run(self._outcome, job, token, now, "fail", str(e), None)
            counts.failed += 1
            counts.errors.append(str(e))
            return
        except Rejected as e:
            await self.run(self._outcome, job, token, now, "fail", str(e), None)
            counts.failed += 1
            counts.errors.append(f"push {job.row_id} ({job.op} #{job.number}): {e}")
            log.warning("backend %s: push %s (%s for #%s) failed: %s", self.name, job.row_id, job.op, job.number, e)
            return
        except DeskDown as e:
            at = await self.run(self._outcome, job, token, now, "defer", str(e), None)
            counts.deferred += 1
            log.warning("backend %s: desk unavailable (%s); push %s deferred", self.name, e, job.row_id)
            raise Stop(at, f"desk unavailable: {e}") from None
        await self.run(self._done, job, token, now, result)
        counts.done += 1

    async def _perform(self, job: Job) -> Any:
        d = self.desk
        if job.op == "create":
            return await self._create(job)
        if job.remote_key is None:
            raise Blocked(f"ticket #{job.number} has no remote request yet (its create failed: "
                          f"`backend list --status failed`, then `backend retry ID`)")
        if job.op == "comment":
            return await d.comment(job.remote_key, job.body, job.internal)
        if job.op == "attachment":
            assert job.attachment is not None
            filename, ctype, size, sha = job.attachment
            if size > self.settings.max_attachment_bytes:
                raise TooLarge(f"{size} bytes, over backend.max_attachment_bytes = "
                               f"{self.settings.max_attachment_bytes}")
            data = await self.run(self.app.blobs.get, sha)
            return await d.attach(job.remote_key, filename, ctype, data, job.internal)
        if job.op == "update":
            await d.update(job.remote_key, status=job.params.get("status"), priority=job.params.get("priority"))
            return job.params.get("status")
        if job.op == "participants":
            if not d.has_participants:
                return None
            wanted = {e.lower() for e in job.params.get("emails") or []}
            ids = [await self.customer(e, n) for e, n in job.watchers if e.lower() in wanted]
            if not ids:
                return None  # no longer a watcher the gateway may mail
            await d.participants(job.remote_key, ids)
            return None
        raise Rejected(f"unknown push operation {job.op!r}")

    async def _create(self, job: Job) -> tuple[RemoteRef, str]:
        d = self.desk
        if job.attempts > 1:  # an earlier attempt may have reached the desk: find it before making another
            found = await d.find(job.ref)
            if found is not None:
                log.info("backend %s: ticket #%s found as %s (an earlier create's answer was lost)", self.name,
                         job.number, found.key)
                return found, job.customer_id or ""
        email_addr, name = job.reporter
        cid = job.customer_id or await self.customer(email_addr, name)
        participants = [await self.customer(e, n) for e, n in job.watchers] if d.has_participants else []
        req = NewRequest(ref=job.ref, number=job.number, subject=job.subject, description=job.description,
                         request_type=self.settings.request_type(job.type), customer_email=email_addr,
                         customer_name=name, participants=participants)
        return await d.create(req, cid), cid

    async def customer(self, email_addr: str, name: str) -> str:
        """The desk's id of this customer (found or created once, then remembered)."""
        known, pending = await self.run(self._customer_row, email_addr)
        if known:
            return str(known)
        try:
            cid = await self.desk.customer(email_addr, name)
        except Pending:
            now = self.app.clock()
            make = getattr(self.desk, "create_person", None)
            if make is not None and (pending is None or now - pending > PERSON_CREATE_AGAIN):
                await make(email_addr, name)
                await self.run(self._customer_pending, email_addr, now)
            raise
        await self.run(self._customer_found, email_addr, cid)
        return cid

    # Database steps (threads) -----------------------------------------------------------------------------
    def _paused_until(self, now: datetime) -> datetime | None:
        with self.app.sessions() as s:
            st = s.get(BackendState, self.name)
            return st.paused_until if st is not None and st.paused_until and st.paused_until > now else None

    def _pause(self, until: datetime, why: str) -> None:
        with transaction(self.app.sessions) as s:
            st = self._state(s)
            st.paused_until = until
            st.last_error = why[:2000]

    def _state(self, s: Any) -> BackendState:
        st = s.get(BackendState, self.name)
        if st is None:
            st = BackendState(backend=self.name, poll_requested=False, updated_at=self.app.clock())
            s.add(st)
            s.flush()
        return st

    def _customer_row(self, email_addr: str) -> tuple[str | None, datetime | None]:
        with self.app.sessions() as s:
            row = s.scalar(select(BackendCustomer).where(BackendCustomer.backend == self.name,
                                                         BackendCustomer.email == email_addr.lower()))
            return (row.remote_id, row.pending_since) if row is not None else (None, None)

    def _customer_upsert(self, email_addr: str, **values: Any) -> None:
        with transaction(self.app.sessions) as s:
            row = s.scalar(select(BackendCustomer).where(BackendCustomer.backend == self.name,
                                                         BackendCustomer.email == email_addr.lower()))
            if row is None:
                row = BackendCustomer(backend=self.name, email=email_addr.lower(), created_at=self.app.clock())
                s.add(row)
            for k, v in values.items():
                setattr(row, k, v)

    def _customer_pending(self, email_addr: str, now: datetime) -> None:
        self._customer_upsert(email_addr, pending_since=now)

    def _customer_found(self, email_addr: str, cid: str) -> None:
        self._customer_upsert(email_addr, remote_id=cid, pending_since=None)

    def _load(self, row_id: int, token: str) -> Job | None:
        with self.app.sessions() as s:
            row = queue.mine(s, row_id, token)
            if row is None:
                return None
            t = s.get(Ticket, row.ticket_id)
            link = s.scalar(select(BackendLink).where(BackendLink.backend == self.name,
                                                      BackendLink.ticket_id == row.ticket_id))
            if t is None or link is None:
                with s.begin():
                    queue.fail(row, "ticket not brokered (created before the backend was configured, or deleted)")
                return None
            rep = t.reporter
            job = Job(row_id=row.id, op=row.op, attempts=row.attempts, params=dict(row.params or {}),
                      ticket_id=t.id, number=t.number, ref=link.ref, remote_key=link.remote_key,
                      customer_id=link.customer_id, subject=t.subject, description=t.description or "",
                      type=t.type, priority=t.priority,
                      reporter=(t.sender_email or (rep.email if rep is not None else ""),
                                (rep.name or "") if rep is not None else ""),
                      # only those the gateway may mail: the desk mails its participants (gateway.guard.relay)
                      watchers=[(w.contact.email, w.contact.name or "") for w in t.watchers if mailable(w)][:50])
            if row.op == "comment":
                c = s.get(Comment, job.params.get("comment_id"))
                if c is None:
                    with s.begin():
                        queue.fail(row, "comment gone")
                    return None
                job.internal = c.internal
                job.body = _comment_text(c)
            elif row.op == "attachment":
                a = s.get(Attachment, job.params.get("attachment_id"))
                if a is None:
                    with s.begin():
                        queue.fail(row, "attachment gone")
                    return None
                job.attachment = (a.filename, a.content_type, a.size, a.sha256)
                job.internal = bool(job.params.get("internal"))
            return job

    def _outcome(self, job: Job, token: str, now: datetime, what: str, error: str,
                 at: datetime | None) -> datetime | None:
        with transaction(self.app.sessions) as s:
            row = queue.mine(s, job.row_id, token)
            if row is None:
                return None
            if what == "fail":
                queue.fail(row, error)
            else:
                queue.defer(row, self.settings, now, error, at=at)
            return row.next_attempt_at

    def _done(self, job: Job, token: str, now: datetime, result: Any) -> None:
        with transaction(self.app.sessions) as s:
            row = queue.mine(s, job.row_id, token)
            if row is None:
                return
            link = s.scalar(select(BackendLink).where(BackendLink.backend == self.name,
                                                      BackendLink.ticket_id == job.ticket_id))
            assert link is not None
            text: str | None = None
            if job.op == "create":
                ref, cid = result
                link.remote_key, link.remote_id, link.customer_id = ref.key, ref.id or None, cid or None
                link.updated_at = now
                text = ref.key
                self._follow_ups(s, job, comment_id=None, now=now)
                if job.priority in self.settings.priorities:
                    self._push(s, job.ticket_id, "update", {"priority": self.settings.priorities[job.priority]}, now)
            elif job.op in ("comment", "attachment"):
                text = str(result)
                self._item(s, job.ticket_id, "comment" if job.op == "comment" else "attachment", text,
                           job.params.get("comment_id"), "out", now)
                if job.op == "comment":
                    self._follow_ups(s, job, comment_id=job.params.get("comment_id"), now=now)
            elif job.op == "update" and result:
                link.remote_status = str(result)
                text = f"status {result}"
            queue.finish(row, now, text)

    def _follow_ups(self, s: Any, job: Job, *, comment_id: int | None, now: datetime) -> None:
        """The files of the mail that made the request or the comment, each a push of its own."""
        q = select(Attachment.id).where(Attachment.ticket_id == job.ticket_id).order_by(Attachment.id)
        q = q.where(Attachment.comment_id.is_(None) if comment_id is None else Attachment.comment_id == comment_id)
        for aid in s.scalars(q.limit(100)):
            self._push(s, job.ticket_id, "attachment", {"attachment_id": aid, "comment_id": comment_id,
                                                        "internal": job.internal}, now)

    def _push(self, s: Any, ticket_id: int, op: str, params: dict[str, Any], now: datetime) -> None:
        s.add(BackendPush(backend=self.name, ticket_id=ticket_id, op=op, params=params, status="queued",
                          attempts=0, next_attempt_at=now, created_at=now))

    def _item(self, s: Any, ticket_id: int, kind: str, remote_id: str, comment_id: int | None, direction: str,
              now: datetime) -> None:
        exists = s.scalar(select(BackendItem.id).where(BackendItem.backend == self.name, BackendItem.kind == kind,
                                                       BackendItem.remote_id == remote_id))
        if exists is None:
            s.add(BackendItem(backend=self.name, ticket_id=ticket_id, kind=kind, remote_id=remote_id,
                              comment_id=comment_id, direction=direction, created_at=now))

    def _too_big(self, job: Job, token: str, now: datetime, why: str) -> None:
        """A file the desk cannot take: a note on the ticket (pushed to the desk as an internal comment)."""
        from gateway.tickets import Tickets

        assert job.attachment is not None
        filename, _, size, _ = job.attachment
        with transaction(self.app.sessions) as s:
            row = queue.mine(s, job.row_id, token)
            t = s.get(Ticket, job.ticket_id)
            if row is None or t is None:
                return
            Tickets(s, clock=self.app.clock, listeners=self.app.listeners).add_comment(
                t, author=None, author_email=None, internal=True, source="system",
                body=f"The attachment {filename} ({_size(size)}) was not sent to {self.desk.kind}: {why}. "
                     f"It is kept in the gateway.")
            queue.finish(row, now, "too big: kept in the gateway")

    # From the desk --------------------------------------------------------------------------------------
    async def poll(self, now: datetime | None = None) -> dict[str, int]:
        """Tickets updated in the desk since the last poll; each linked one is read and applied."""
        from gateway.backends import sync

        now = now or self.app.clock()
        if await self.run(self._paused_until, now) is not None:
            return {"seen": 0, "applied": 0}
        since = await self.run(sync.poll_start, self, now)
        try:
            updated = await self.desk.updated_since(since, now, MAX_POLL_PAGES)
        except RateLimited as e:
            await self.run(self._pause, now + timedelta(seconds=e.retry_after), str(e))
            raise
        mine = await self.run(sync.linked_keys, self, [t.key for t in updated])
        applied = 0
        for t in updated:
            if t.key in mine:
                applied += await self.refresh(t.key, t)
        newest = max((t.updated for t in updated if t.updated is not None), default=None)
        truncated = len(updated) >= MAX_POLL_PAGES * self.desk.page_size
        await self.run(sync.poll_done, self, now, newest if truncated and newest else now)
        return {"seen": len(updated), "applied": applied}

    async def refresh(self, key: str, known: RemoteTicket | None = None) -> int:
        """Read one request (its status and comments) and bring what is new into the gateway."""
        from gateway.backends import sync

        try:
            remote = known or await self.desk.read(key)
            comments = await self.desk.comments(key, MAX_COMMENTS)
            me = await self.desk.me()
        except NotFound:
            log.warning("backend %s: request %s is gone from the desk", self.name, key)
            return 0
        return int(await self.run(sync.apply, self, key, remote, comments, me))

    async def ring(self) -> int:
        """Re-read the requests a webhook rang the doorbell for; a poll when it named none we know."""
        from gateway.backends import sync

        keys, poll = await self.run(sync.doorbells, self, MAX_REFRESH)
        n = 0
        for key in keys:
            n += await self.refresh(key)
        if poll:
            await self.poll()
        return n


def _comment_text(c: Comment) -> str:
    who = ""
    if c.source == "system":
        who = "Note from the gateway"
    elif c.author is not None:
        who = f"{c.author.name} <{c.author.email}>" if c.author.name else c.author.email
    elif c.author_email:
        who = c.author_email
    return f"{who}:\n\n{c.body}" if who else c.body


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def is_conflict(e: BaseException) -> bool:
    return isinstance(e, IntegrityError)
