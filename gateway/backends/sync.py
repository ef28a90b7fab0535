"""From the desk into the gateway (the database half; the broker does the talking).

Comments: a remote comment the gateway does not know, not written by the integration account (our own writes
coming back), becomes a local comment (source 'backend'): staff comments reach the customer through the
gateway's notifications (or not, under notifications = 'backend'); the SLA clock sees the first response.
Status: applied only when the desk's status changed since it was last seen (so a local change the desk has no
status for is not undone by every poll), through Tickets.change: the SLA clock pauses, stops and resumes with
it. A remote status not in [backend.statuses] is reported on the link and in the log, not applied.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from gateway.backends.desk import RemoteComment, RemoteTicket
from gateway.backends.queue import IMPORTING
from gateway.backends.store import BackendItem, BackendLink, BackendState
from gateway.db import transaction
from gateway.models import Contact, Ticket
from gateway.store.sql import directory
from gateway.tickets import Tickets

if TYPE_CHECKING:
    from gateway.backends.desk import Desk
    from gateway.backends.settings import Settings


class Broker(Protocol):
    """What the sync needs of gateway.backends.broker.Broker (which calls it; typed here, not imported, so that
    the two modules do not import each other)."""

    @property
    def app(self) -> Any: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def desk(self) -> Desk: ...

    @property
    def name(self) -> str: ...


log = logging.getLogger("gateway.backends")
MAX_BODY = 200_000


def poll_start(b: Broker, now: datetime) -> datetime | None:
    with b.app.sessions() as s:
        st = s.get(BackendState, b.name)
        return st.polled_until if st is not None else None


def poll_done(b: Broker, now: datetime, until: datetime) -> None:
    with transaction(b.app.sessions) as s:
        st = s.get(BackendState, b.name)
        if st is None:
            st = BackendState(backend=b.name, poll_requested=False, updated_at=now)
            s.add(st)
        st.polled_until = until
        st.poll_requested = False
        st.updated_at = now


def linked_keys(b: Broker, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    with b.app.sessions() as s:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            found.update(s.scalars(select(BackendLink.remote_key).where(
                BackendLink.backend == b.name, BackendLink.remote_key.in_(keys[i:i + 500]))))
        return found


def doorbells(b: Broker, limit: int) -> tuple[list[str], bool]:
    with b.app.sessions() as s:
        keys = [k for k in s.scalars(select(BackendLink.remote_key).where(
            BackendLink.backend == b.name, BackendLink.refresh_at.is_not(None), BackendLink.remote_key.is_not(None))
            .order_by(BackendLink.refresh_at).limit(limit)) if k]
        st = s.get(BackendState, b.name)
        return keys, bool(st is not None and st.poll_requested)


def ring(app: Any, name: str, keys: list[str], now: datetime) -> int:
    """A webhook arrived: mark the requests it names for a re-read (or ask for a poll). One short write; the
    payload decides nothing else."""
    with transaction(app.sessions) as s:
        n = 0
        if keys:
            n = int(s.execute(update(BackendLink).where(BackendLink.backend == name,
                                                        BackendLink.remote_key.in_(keys[:10]))
                              .values(refresh_at=now).execution_options(synchronize_session=False)).rowcount or 0)  # type: ignore[attr-defined]
        if n == 0:
            st = s.get(BackendState, name)
            if st is None:
                st = BackendState(backend=name, poll_requested=True, updated_at=now)
                s.add(st)
            st.poll_requested = True
        return n


def apply(b: Broker, key: str, remote: RemoteTicket, comments: list[RemoteComment], me: str) -> int:
    """Bring one request's new comments and status into the gateway; returns how many changes were made."""
    try:
        with transaction(b.app.sessions) as s:
            return _apply(b, s, key, remote, comments, me)
    except IntegrityError:  # another instance imported the same comment first
        log.info("backend %s: %s was applied concurrently", b.name, key)
        return 0


def _listeners(b: Broker) -> list[Any]:
    if b.settings.notifications == "gateway":
        return list(b.app.listeners)
    from gateway.outbound.notify import Outbound

    return [li for li in b.app.listeners if not isinstance(li, Outbound)]


def _apply(b: Broker, s: Any, key: str, remote: RemoteTicket, comments: list[RemoteComment], me: str) -> int:
    link = s.scalar(select(BackendLink).where(BackendLink.backend == b.name, BackendLink.remote_key == key))
    if link is None:
        return 0
    t = s.get(Ticket, link.ticket_id)
    if t is None:
        return 0
    s.info[IMPORTING] = True
    try:
        now = b.app.clock()
        tickets = Tickets(s, clock=b.app.clock, listeners=_listeners(b))
        known = set(s.scalars(select(BackendItem.remote_id).where(BackendItem.backend == b.name,
                                                                  BackendItem.ticket_id == t.id)))
        changes = 0
        for c in comments:
            if c.id in known:
                continue
            if me and c.author_id == me:  # ours, coming back (its answer was lost, or an attachment's note)
                s.add(BackendItem(backend=b.name, ticket_id=t.id, kind="comment", remote_id=c.id, direction="out",
                                  created_at=now))
                continue
            author = _author(b, s, c, link)
            local = tickets.add_comment(t, author=author, author_email=c.author_email or None,
                                        body=c.body[:MAX_BODY], internal=not c.public, source="backend")
            s.add(BackendItem(backend=b.name, ticket_id=t.id, kind="comment", remote_id=c.id,
                              comment_id=local.id, direction="in", created_at=now))
            s.flush()
            changes += 1
        if remote.status and remote.status != link.remote_status:
            local_status = b.settings.statuses.get(remote.status)
            if local_status is None:
                link.status_note = (f"remote status {remote.status!r} is not in [backend.statuses]: not applied "
                                    f"(the mapping is out of date)")
                log.warning("backend %s: %s has status %r, not in [backend.statuses]", b.name, key, remote.status)
            else:
                link.status_note = None
                if t.status != local_status:
                    tickets.change(t, status=local_status)
                    changes += 1
            link.remote_status = remote.status
        link.read_at = now
        link.refresh_at = None
        link.updated_at = now
        return changes
    finally:
        s.info.pop(IMPORTING, None)


def _author(b: Broker, s: Any, c: RemoteComment, link: BackendLink) -> Contact | None:
    """The local contact of a remote comment's author: an existing contact by address; a desk agent with an
    address becomes a staff contact the gateway never mails (the desk notifies its agents)."""
    customer = c.is_agent is False or (c.is_agent is None and link.customer_id and c.author_id == link.customer_id)
    if not c.author_email:
        return None
    d = directory(s, b.app.clock)  # a new staff contact: forgotten by the staff the notifications remember
    contact = d.contact(c.author_email)
    if contact is not None or customer:
        return contact
    contact = d.register(c.author_email, name=c.author_name[:200], staff=True, auto_registered=True)
    contact.undeliverable = True
    contact.undeliverable_reason = f"agent of the {b.desk.kind} desk (notified by the desk)"
    return contact
