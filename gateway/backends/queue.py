"""The durable push queue: the listener that writes rows in the transaction of the change, and the claim and
record steps of the delivery round (short transactions; the desk is talked to between them).

Order: the rows of one ticket are delivered one after the other, oldest first (a comment never reaches the
desk before its request); a row waiting for a retry holds back the later rows of its ticket only.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from gateway import backoff as _backoff
from gateway.backends.settings import Settings
from gateway.backends.store import BackendLink, BackendPush
from gateway.db import transaction
from gateway.events import CommentAdded, TicketChanged, TicketCreated, WatcherAdded
from gateway.guard.relay import contact_mailable

log = logging.getLogger("gateway.backends")

IMPORTING = "tg.backend.importing"  # session.info flag: the change comes from the desk (never pushed back)


def new_ref() -> str:
    return f"tg-{uuid.uuid4().hex[:24]}"


class Enqueue:
    """Listener (app.listeners): ticket events -> rows of the push queue, in the same transaction."""

    def __init__(self, settings: Settings, clock: Any) -> None:
        self.settings = settings
        self.clock = clock

    def __call__(self, session: Session, event: Any) -> None:
        if session.info.get(IMPORTING):
            return  # written by the sync from the desk: it is there already
        if isinstance(event, TicketCreated):
            self.created(session, event)
        elif isinstance(event, CommentAdded):
            if event.comment.source != "backend":
                self.push(session, event.ticket.id, "comment", {"comment_id": event.comment.id})
        elif isinstance(event, TicketChanged):
            self.changed(session, event)
        elif isinstance(event, WatcherAdded):
            self.watcher(session, event)

    def created(self, s: Session, ev: TicketCreated) -> None:
        now = self.clock()
        s.add(BackendLink(backend=self.settings.name, ticket_id=ev.ticket.id, ref=new_ref(), created_at=now,
                          updated_at=now))
        self.push(s, ev.ticket.id, "create", {})

    def changed(self, s: Session, ev: TicketChanged) -> None:
        params: dict[str, Any] = {}
        if "status" in ev.changes:
            remote = self.settings.remote_status_for(ev.changes["status"][1])
            if remote is not None:
                params["status"] = remote
            else:
                log.info("backend: ticket #%s status %s has no remote status in [backend.statuses]: not pushed",
                         ev.ticket.number, ev.changes["status"][1])
        if "priority" in ev.changes and ev.changes["priority"][1] in self.settings.priorities:
            params["priority"] = self.settings.priorities[ev.changes["priority"][1]]
        if params:
            self.push(s, ev.ticket.id, "update", params)

    def watcher(self, s: Session, ev: WatcherAdded) -> None:
        """A watcher the gateway may mail becomes a request participant. The desk mails its participants, so a
        watcher the relay rules do not vouch for (gateway.guard.relay) is never pushed. One added before the
        create is sent rides on the create, which reads the ticket's vouched watchers when it runs."""
        if ev.ticket.id is None or not (ev.vouched or contact_mailable(ev.contact)):
            return
        name, tid = self.settings.name, ev.ticket.id
        if s.scalar(select(BackendLink.id).where(BackendLink.backend == name, BackendLink.ticket_id == tid)) is None:
            return  # the ticket is being made: its create is queued next and carries the watchers
        create_waiting = s.scalar(select(BackendPush.id).where(
            BackendPush.backend == name, BackendPush.ticket_id == tid, BackendPush.status == "queued",
            BackendPush.op == "create").limit(1))
        if create_waiting is None:
            self.push(s, tid, "participants", {"emails": [ev.contact.email.lower()]})

    def push(self, s: Session, ticket_id: int, op: str, params: dict[str, Any]) -> None:
        now = self.clock()
        s.add(BackendPush(backend=self.settings.name, ticket_id=ticket_id, op=op, params=params, status="queued",
                          attempts=0, next_attempt_at=now, created_at=now))
        s.flush()


def backoff(attempt: int, settings: Settings) -> timedelta:
    return _backoff.delay(max(1, attempt), base_seconds=settings.retry_base, factor=2,
                          cap_seconds=max(settings.retry_max, settings.retry_base))


def claim(factory: Any, settings: Settings, now: datetime, limit: int) -> tuple[str, list[int]]:
    """Claim due rows that are first in their ticket's line (one per ticket per round)."""
    token = uuid.uuid4().hex
    free = or_(BackendPush.claimed_until.is_(None), BackendPush.claimed_until <= now)
    earlier = aliased(BackendPush)
    first = ~exists().where(earlier.ticket_id == BackendPush.ticket_id, earlier.status == "queued",
                            earlier.id < BackendPush.id)
    due = and_(BackendPush.backend == settings.name, BackendPush.status == "queued",
               BackendPush.next_attempt_at <= now, free)
    with transaction(factory) as s:
        inner = select(BackendPush.id).where(due, first).order_by(BackendPush.next_attempt_at, BackendPush.id) \
            .limit(limit)
        if s.get_bind().dialect.name == "postgresql":
            inner = inner.with_for_update(skip_locked=True)
        ids = list(s.scalars(inner))
        if not ids:
            return token, []
        s.execute(update(BackendPush).where(BackendPush.id.in_(ids), due)
                  .values(claim_token=token, claimed_until=now + timedelta(seconds=settings.lease_seconds),
                          attempts=BackendPush.attempts + 1)
                  .execution_options(synchronize_session=False))
        got = list(s.scalars(select(BackendPush.id).where(BackendPush.claim_token == token)
                             .order_by(BackendPush.next_attempt_at, BackendPush.id)))
    return token, got


def mine(s: Session, row_id: int, token: str) -> BackendPush | None:
    return s.scalar(select(BackendPush).where(BackendPush.id == row_id, BackendPush.claim_token == token))


def finish(row: BackendPush, now: datetime, result: str | None = None) -> None:
    row.status = "done"
    row.done_at = now
    row.result = (result or "")[:200] or None
    row.claim_token = None
    row.claimed_until = None
    row.next_attempt_at = None


def defer(row: BackendPush, settings: Settings, now: datetime, error: str, *, at: datetime | None = None) -> None:
    row.last_error = error[:2000]
    row.claim_token = None
    row.claimed_until = None
    row.next_attempt_at = at or now + backoff(row.attempts, settings)


def fail(row: BackendPush, error: str) -> None:
    row.status = "failed"
    row.last_error = error[:2000]
    row.claim_token = None
    row.claimed_until = None
    row.next_attempt_at = None


def release(factory: Any, token: str, ids: list[int], at: datetime, why: str) -> int:
    """Give claimed rows back unattempted (the desk asked us to wait, or is down): due again at `at`."""
    if not ids:
        return 0
    with transaction(factory) as s:
        res = s.execute(update(BackendPush).where(BackendPush.id.in_(ids), BackendPush.claim_token == token)
                        .values(claim_token=None, claimed_until=None, next_attempt_at=at, last_error=why[:2000],
                                attempts=BackendPush.attempts - 1)
                        .execution_options(synchronize_session=False))
        return int(res.rowcount or 0)  # type: ignore[attr-defined]


def retry(factory: Any, row_id: int, now: datetime) -> BackendPush:
    with transaction(factory) as s:
        row = s.get(BackendPush, row_id)
        if row is None:
            raise KeyError(f"no backend push {row_id}")
        if row.status == "done":
            raise ValueError(f"backend push {row_id} was delivered on {row.done_at}")
        row.status = "queued"
        row.next_attempt_at = now
        row.claim_token = None
        row.claimed_until = None
        row.last_error = (row.last_error + "; " if row.last_error else "") + "retry requested"
        s.flush()
        return row
