"""Ticket and contact operations shared by the pipeline and the CLI.

Every change goes through here so that listeners (notifications, SLA) see it in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, inspect, select, update
from sqlalchemy.orm import Session, lazyload

from gateway import ourmail
from gateway.clock import Clock
from gateway.db import insert_ignoring_duplicates
from gateway.events import CommentAdded, Event, Listeners, Origin, TicketChanged, TicketCreated, WatcherAdded
from gateway.models import (
    PRIORITIES,
    STATUSES,
    TYPES,
    Comment,
    Contact,
    Counter,
    InboundMail,
    Organisation,
    OrganisationDomain,
    Ticket,
    TicketLink,
    TicketMessageId,
    Watcher,
    table_of,
)

# The pipeline's lookups, built once: a statement built per call costs more than running it (SQLAlchemy
# derives its cache key anew each time).
_CONTACT_BY_EMAIL = select(Contact).where(Contact.email == bindparam("email"))
_DOMAIN = select(OrganisationDomain).where(OrganisationDomain.domain == bindparam("domain"))
# The pipeline loads a ticket without joining its reporter, assignee and organisation: they are loaded on first
# use, from the session when they are there already (the reporter usually is: the sender of the reply).
LIGHT = (lazyload(Ticket.reporter), lazyload(Ticket.assignee), lazyload(Ticket.organisation))
_TICKET_BY_NUMBER = select(Ticket).where(Ticket.number == bindparam("number")).options(*LIGHT)
TICKETS_BY_MESSAGE_ID = (select(TicketMessageId.message_id, TicketMessageId.ticket_id)
                         .where(TicketMessageId.message_id.in_(bindparam("ids", expanding=True))))
_LINK_KNOWN = select(TicketLink.id).where(TicketLink.ticket_id == bindparam("ticket_id"),
                                          TicketLink.other_ticket_id == bindparam("other_ticket_id"),
                                          TicketLink.kind == bindparam("kind"))

_COUNTERS = table_of(Counter)
_NEXT_TICKET_NUMBER = (update(_COUNTERS).where(_COUNTERS.c.name == "ticket").values(value=_COUNTERS.c.value + 1)
                       .returning(_COUNTERS.c.value))
# PostgreSQL: a sequence (migration 0008_ticket_numbers). The counter row's lock was held until the opening
# transaction committed, so instances sharing the database threaded one at a time; nextval() takes no lock (a
# rolled-back ticket leaves a gap in the numbers).
TICKET_NUMBER_SEQUENCE = "ticket_numbers"
_NEXT_TICKET_NUMBER_PG = select(func.nextval(TICKET_NUMBER_SEQUENCE))


MEMBER = "member of the ticket's organisation (visibility 'organisation')"


class InvalidChange(ValueError):
    pass


# A link read from its other end (stored "A blocks B" is, on B, "blocked-by A"); see gateway.models.LINK_KINDS
LINK_INVERSE = {"relates": "relates", "duplicates": "duplicated-by", "caused-by": "causes", "blocks": "blocked-by",
                "related": "related (from)", "follow_up_of": "follow_up_of (from)"}
MAX_MERGE_HOPS = 20


def normalise_email(addr: str) -> str:
    return addr.strip().lower()


def participant_reason(ticket: Ticket, contact: Contact | None, email: str | None) -> str | None:
    """Why this sender may write to the ticket, or None (see Tickets.is_participant). Pure: reads the ticket's
    watchers and organisation, loaded or not."""
    email = normalise_email(email) if email else None
    if contact is not None and contact.is_staff:
        return "staff"
    if contact is not None and contact.id == ticket.reporter_id:
        return "reporter"
    if email and ticket.sender_email and email == ticket.sender_email:
        return "original sender"
    if email and any(w.contact.email == email for w in ticket.watchers):
        return "watcher"
    if (contact is not None and contact.organisation_id is not None
            and contact.organisation_id == ticket.organisation_id and ticket.organisation is not None
            and ticket.organisation.visibility == "organisation"):
        return MEMBER
    return None


class Directory:
    """Contacts and organisations."""

    def __init__(self, session: Session, clock: Clock) -> None:
        self.s = session
        self.clock = clock

    def contact(self, email: str) -> Contact | None:
        with self.s.no_autoflush:
            return self.s.scalar(_CONTACT_BY_EMAIL, {"email": normalise_email(email)})

    # Hooks for the store (gateway.store.sql: StoreDirectory), which remembers what a session found and what a
    # transaction found nowhere, and forgets it when it changes; here nothing is remembered.
    def written(self, c: Contact, *, staff: bool) -> None:
        """A contact was just registered (staff: a staff contact)."""

    def organisations_changed(self) -> None:
        """An organisation or one of its domains was added or removed."""

    def staff_changed(self) -> None:
        """A contact's role changed to or from staff."""

    def contact_removed(self) -> None:
        """A contact was deleted."""

    def organisation(self, name: str) -> Organisation | None:
        return self.s.scalar(select(Organisation).where(Organisation.name == name))

    def organisation_for_domain(self, domain: str) -> Organisation | None:
        with self.s.no_autoflush:  # organisations and their domains are written as they are made
            row = self.s.scalar(_DOMAIN, {"domain": domain.lower()})
        return row.organisation if row else None

    def add_organisation(self, name: str, domains: Iterable[str] = ()) -> Organisation:
        org = self.organisation(name)
        if org is None:
            org = Organisation(name=name, created_at=self.clock())
            self.s.add(org)
            self.s.flush()
        self.organisations_changed()
        for d in domains:
            d = d.strip().lower().lstrip("@")
            if d and self.s.scalar(select(OrganisationDomain).where(OrganisationDomain.domain == d)) is None:
                self.s.add(OrganisationDomain(organisation_id=org.id, domain=d))
        self.s.flush()
        self.s.refresh(org)
        return org

    def add_contact(self, email: str, *, name: str = "", staff: bool = False,
                    organisation: Organisation | None = None, auto_registered: bool = False) -> Contact:
        email = normalise_email(email)
        c = self.contact(email)
        if c is None:
            return self.register(email, name=name, staff=staff, organisation=organisation,
                                 auto_registered=auto_registered)
        else:
            if name:
                c.name = name
            if staff:
                c.role = "staff"
                self.staff_changed()
            elif c.role == "correspondent":  # registered now: a customer, in the organisation of their domain
                c.role = "customer"
                if organisation is None and c.organisation_id is None:
                    organisation = self.organisation_for_domain(email.rpartition("@")[2])
            if organisation is not None:
                c.organisation_id = organisation.id
                c.organisation = organisation
            self.s.flush()
        return c

    def register(self, email: str, *, name: str = "", staff: bool = False,
                 organisation: Organisation | None = None, auto_registered: bool = False,
                 flush: bool = True, correspondent: bool = False) -> Contact:
        """A new contact, for a caller that has just found none for this address (`contact()` is None);
        the organisation follows from the address's domain unless given. correspondent=True: someone who
        wrote to us without an account (role 'correspondent'): in no organisation. A concurrent writer that registered
        the same address first makes the flush fail (IntegrityError): the caller's transaction runs again.
        flush=False: written with the caller's next flush (its id is None until then; a Ticket made for it
        with `Tickets.create` is written with it)."""
        email = normalise_email(email)
        if organisation is None and not correspondent:
            organisation = self.organisation_for_domain(email.rpartition("@")[2])
        role = "staff" if staff else "correspondent" if correspondent else "customer"
        # both: the relationship for a contact not written yet, the column for whoever reads it before the flush
        c = Contact(email=email, name=name, role=role, organisation=organisation,
                    organisation_id=organisation.id if organisation else None,
                    auto_registered=auto_registered, undeliverable=False, created_at=self.clock())
        self.s.add(c)
        if flush:
            self.s.flush()
        self.written(c, staff=staff)
        return c


class Tickets:
    def __init__(self, session: Session, *, clock: Clock, listeners: Listeners | None = None,
                 imported: bool = False, quiet: bool = False) -> None:
        """imported: the changes come from an import of old mail (gateway.history); quiet: nothing is to be
        mailed for them. Every event says so."""
        self.s = session
        self.clock = clock
        self.listeners = listeners if listeners is not None else []
        self.imported = imported
        self.quiet = quiet

    def emit(self, event: Event) -> None:
        if (self.imported or self.quiet) and isinstance(event, Origin):
            event.imported = event.imported or self.imported
            event.quiet = event.quiet or self.quiet
        for listener in self.listeners:
            listener(self.s, event)

    # Queries --------------------------------------------------------------
    def get(self, number: int) -> Ticket | None:
        with self.s.no_autoflush:  # tickets are written as they are made (see by_message_ids)
            return self.s.scalar(_TICKET_BY_NUMBER, {"number": number})

    def by_message_ids(self, ids: Sequence[str]) -> list[tuple[str, Ticket]]:
        """Tickets that know any of these Message-IDs, in the order of `ids` (most relevant first)."""
        if not ids:
            return []
        ids = list(ids)[:200]
        # no autoflush: these rows are written directly (Core inserts), tickets as they are made; what is still
        # pending (this mail's row, a contact registered for it) is written with the ticket or comment
        with self.s.no_autoflush:
            rows: Sequence[Any] | None = self.known_message_ids(ids)
            if rows is None:
                rows = self.s.connection().execute(TICKETS_BY_MESSAGE_ID, {"ids": ids}).all()
            if not rows:  # the common case (a new conversation): one indexed lookup, no ticket loaded
                return []
            order = {mid: i for i, mid in enumerate(ids)}
            out = []
            for mid, ticket_id in sorted(rows, key=lambda r: (order.get(r[0], 1 << 30), -r[1])):
                t = self.s.get(Ticket, ticket_id, options=LIGHT)
                if t is not None:
                    self.found(t)  # a subject tag [#N] of the same mail finds it
                    out.append((mid, t))
        return out

    # Hooks for the store (gateway.store.sql: StoreTickets), which remembers what a session found and what a
    # transaction knows, and writes new rows its own way; here nothing is remembered and a new row is flushed.
    def found(self, t: Ticket) -> None:
        """A ticket was just found or made (a later `get` of its number may use it)."""

    def known_message_ids(self, ids: Sequence[str]) -> list[tuple[str, int]] | None:
        """(Message-ID, ticket id) of every ticket known to know one of these Message-IDs, when that is known
        for all of them; None: ask."""
        return None

    def number_taken(self, number: int) -> None:
        """A ticket number was just handed out."""

    def message_ids_written(self, ids: Iterable[str] | None) -> None:
        """Rows of these Message-IDs were just written for a ticket (None: any, moved by a merge)."""

    def write_new(self, objs: Sequence[Any]) -> None:
        """Write new rows (a ticket, with the contact registered for it first): a flush."""
        self.s.add_all(objs)
        self.s.flush()

    def write_comment(self, c: Comment, ticket: Ticket) -> None:
        """Write a new comment (a contact registered for it and a mail row pending first) and what it changed on
        its ticket: a flush."""
        self.s.add(c)
        self.s.flush()

    def is_participant(self, ticket: Ticket, contact: Contact | None, email: str | None) -> str | None:
        """Why this sender may write to the ticket, or None: reporter, first sender, watcher, staff, and
        member of the ticket's organisation where that organisation's visibility is 'organisation' (under
        'reporter-only', the default, its members are strangers to each other's tickets)."""
        return participant_reason(ticket, contact, email)

    # Changes --------------------------------------------------------------
    def next_number(self) -> int:
        # a Core statement on the session's connection (same transaction): no ORM object holds a counter
        conn = self.s.connection()
        pg = conn.dialect.name == "postgresql"
        number = int(conn.execute(_NEXT_TICKET_NUMBER_PG if pg else _NEXT_TICKET_NUMBER).scalar_one())
        self.number_taken(number)
        return number

    def create(self, *, subject: str, reporter: Contact, sender_email: str | None = None,
               description: str = "", description_full: str = "", description_html: str | None = None,
               organisation_id: int | None = None, priority: str = "medium", type: str = "incident",
               group: str | None = None, tags: list[str] | None = None, message_ids: Iterable[str] = (),
               at: datetime | None = None, source_mail: InboundMail | None = None,
               watchers: Sequence[tuple[Contact, str | None]] = ()) -> Ticket:
        """source_mail: the mail that opens it. A mail row pending in the session is written first; one with a
        preallocated id and outside the session (a batch import's on SQLite) is written later by its caller.
        watchers: (contact, why the gateway may mail it or None), watching from the start (the listeners see
        them with the new ticket: the acknowledgement shows them)."""
        if priority not in PRIORITIES:
            raise InvalidChange(f"unknown priority {priority!r}")
        if type not in TYPES:
            raise InvalidChange(f"unknown type {type!r}")
        now = at or self.clock()
        t = Ticket(number=self.next_number(), subject=subject or "(no subject)", status="open",
                   priority=priority, type=type, reporter=reporter,
                   sender_email=normalise_email(sender_email) if sender_email else reporter.email,
                   organisation_id=organisation_id if organisation_id is not None else reporter.organisation_id,
                   group=group, tags=list(tags or []), description=description,
                   description_full=description_full or description, description_html=description_html,
                   created_at=now, updated_at=now, watchers=[])
        if source_mail is not None:
            if inspect(source_mail).pending:
                self.s.flush()  # the mail row first (a batch import on PostgreSQL), with a contact registered for it
            t.source_mail_id = source_mail.id
        # a reporter registered for this mail (Directory.register(flush=False)) is written first
        self.write_new(([] if inspect(reporter).persistent else [reporter]) + [t])
        self.found(t)
        rows = [{"message_id": mid, "ticket_id": t.id, "direction": "in", "created_at": now}
                for mid in dict.fromkeys(m for m in message_ids if m)]  # a new ticket knows none yet: no lookup
        if rows:  # plain rows, read back only by queries (by_message_ids): no ORM objects needed
            self.s.connection().execute(insert(table_of(TicketMessageId)), rows)
            self.message_ids_written([str(r["message_id"]) for r in rows])
        for contact, vouched in watchers:
            self.add_watcher(t, contact, vouched=vouched, at=now, flush=False)
        if watchers:
            self.s.flush()
        self.emit(TicketCreated(t, mail_id=source_mail.id if source_mail is not None else None))
        return t

    def add_comment(self, ticket: Ticket, *, author: Contact | None, author_email: str | None, body: str,
                    full_text: str = "", html: str | None = None, internal: bool = False,
                    source: str = "mail", mail: InboundMail | None = None, at: datetime | None = None,
                    seen_by: Iterable[str] = (), by_staff: bool | None = None) -> Comment:
        """mail: the mail it comes from; a mail row not written yet is written first, in the same flush.
        seen_by: addresses that had the mail itself (its To and Cc): it is not mailed to them again.
        by_staff: None: the author's role decides (an API or CLI comment without an author is the help desk's)."""
        now = at or self.clock()
        c = Comment(ticket_id=ticket.id, author=author,
                    author_email=normalise_email(author_email) if author_email else (author.email if author else None),
                    body=body, full_text=full_text or body, html=html, internal=internal,
                    by_staff=bool(author and author.is_staff) if by_staff is None else by_staff, source=source,
                    inbound_mail=mail, created_at=now)
        commented(ticket, c, now, at=at)
        self.write_comment(c, ticket)
        self.emit(CommentAdded(ticket, c, mail_id=mail.id if mail is not None else None,
                               seen_by=frozenset(normalise_email(a) for a in seen_by if a)))
        return c

    def add_watcher(self, ticket: Ticket, contact: Contact, *, vouched: str | None = None,
                    at: datetime | None = None, flush: bool = True) -> bool:
        """vouched: why the gateway may mail this watcher (gateway.guard.relay); an existing watcher that had
        no such reason takes this one."""
        done = watched(ticket, contact, vouched, at or self.clock())
        if done is not None:
            if flush:
                self.s.flush()
            self.emit(WatcherAdded(ticket, contact, vouched))
        return done == "added"

    def unsubscribe(self, secret: bytes, token: str) -> tuple[Ticket, str] | None:
        """Remove the watcher a signed unsubscribe token names (gateway.ourmail; the List-Unsubscribe address
        or one-click URL of a notification): (ticket, the watcher's address), or None when the token names no
        current watcher of an existing ticket (already removed, or forged). The ticket's watchers are bounded
        (limits.max_watchers_per_mail per mail): each is checked against the token's signature."""
        parsed = ourmail.parse_unsubscribe_token(token)
        ticket = self.get(parsed.number) if parsed is not None else None
        if ticket is None:
            return None
        w = watcher_of_token(ticket, secret, token)
        if w is None:
            return None
        ticket.watchers.remove(w)  # delete-orphan: the row goes
        self.s.flush()
        return ticket, w.contact.email

    def remember_message_id(self, ticket: Ticket, message_id: str | None, direction: str = "in") -> None:
        if not message_id:
            return
        insert_ignoring_duplicates(self.s, table_of(TicketMessageId),  # known already: nothing to do
                                   [{"message_id": message_id, "ticket_id": ticket.id, "direction": direction,
                                     "created_at": self.clock()}])
        self.message_ids_written((message_id,))

    def link(self, ticket: Ticket, other: Ticket, *, kind: str = "related", reason: str = "") -> None:
        exists = self.s.scalar(_LINK_KNOWN, {"ticket_id": ticket.id, "other_ticket_id": other.id, "kind": kind})
        if exists is None:
            self.s.add(TicketLink(ticket_id=ticket.id, other_ticket_id=other.id, kind=kind, reason=reason,
                                  created_at=self.clock()))
            self.s.flush()

    def links(self, ticket: Ticket, limit: int = 200) -> list[tuple[str, int]]:
        """(kind as read from this ticket, the other ticket's number), oldest link first: 'blocks 7',
        'blocked-by 3', ..."""
        rows = self.s.execute(select(TicketLink.id, TicketLink.kind, Ticket.number)
                              .join(Ticket, Ticket.id == TicketLink.other_ticket_id)
                              .where(TicketLink.ticket_id == ticket.id).order_by(TicketLink.id).limit(limit)).all()
        back = self.s.execute(select(TicketLink.id, TicketLink.kind, Ticket.number)
                              .join(Ticket, Ticket.id == TicketLink.ticket_id)
                              .where(TicketLink.other_ticket_id == ticket.id).order_by(TicketLink.id)
                              .limit(limit)).all()
        both = [(i, k, n) for i, k, n in rows] + [(i, LINK_INVERSE.get(k, f"{k} (from)"), n) for i, k, n in back]
        return [(k, n) for _, k, n in sorted(both)]

    def followed(self, ticket: Ticket) -> Ticket:
        """The ticket a merged ticket was merged into (along the chain, bounded), else the ticket itself: mail
        that names a merged ticket lands on the one it was merged into."""
        seen = {ticket.id}
        for _ in range(MAX_MERGE_HOPS):
            if ticket.merged_into_id is None:
                return ticket
            nxt = self.s.get(Ticket, ticket.merged_into_id, options=LIGHT)
            if nxt is None or nxt.id in seen:
                return ticket
            seen.add(nxt.id)
            ticket = nxt
        return ticket

    def change(self, ticket: Ticket, *, by: Contact | None = None, at: datetime | None = None,
               **fields: Any) -> dict[str, tuple[Any, Any]]:
        """Change status, priority, type, assignee (a Contact or None), organisation (an Organisation or
        None), group, tags, remind_at, merged_into (a Ticket: the bookkeeping of gateway.workflow's merge).
        at: when it happened (an imported mail's Date), else now."""
        now = at or self.clock()
        changes = apply_change(ticket, fields, now, at=at)
        if changes:
            self.s.flush()
            self.emit(TicketChanged(ticket, changes, by=by, at=now))
        return changes


def commented(ticket: Ticket, c: Comment, now: datetime, *, at: datetime | None = None) -> None:
    """What a new comment changes on its ticket (pure): when it was updated, who spoke last in public."""
    if at is None or ticket.updated_at is None or now > ticket.updated_at:  # an old mail imported late
        ticket.updated_at = now                                             # does not turn it back
    if not c.internal and ticket.customer_spoke_last == c.by_staff:  # who spoke last in public
        ticket.customer_spoke_last = not c.by_staff


def watched(ticket: Ticket, contact: Contact, vouched: str | None, now: datetime) -> str | None:
    """Tickets.add_watcher on the objects alone (pure): 'added' (a new watcher), 'vouched' (an existing watcher
    without a reason to be mailed takes this one) or None (nothing changed: the reporter, a watcher already)."""
    if contact.id is not None and contact.id == ticket.reporter_id:
        return None
    for w in ticket.watchers:
        if w.contact_id == contact.id:
            if vouched and not w.vouched:
                w.vouched = vouched
                return "vouched"
            return None
    ticket.watchers.append(Watcher(contact_id=contact.id, contact=contact, vouched=vouched, created_at=now))
    return "added"


def watcher_of_token(ticket: Ticket, secret: bytes, token: str) -> Watcher | None:
    """The watcher of the ticket a signed unsubscribe token names, or None (each watcher is checked against the
    token's signature; they are bounded: limits.max_watchers_per_mail per mail)."""
    for w in list(ticket.watchers):
        if ourmail.verify_unsubscribe(secret, token, ticket_id=ticket.id, recipient=w.contact.email):
            return w
    return None


def apply_change(ticket: Ticket, fields: dict[str, Any], now: datetime, *, at: datetime | None = None
                 ) -> dict[str, tuple[Any, Any]]:
    """Tickets.change on the object alone (pure: nothing written, nobody told); returns what changed."""
    changes: dict[str, tuple[Any, Any]] = {}
    for name, value in fields.items():
        choices = _CHOICES.get(name)
        if choices is not None and value not in choices:
            raise InvalidChange(f"unknown {name} {value!r} (one of {', '.join(choices)})")
        if name in _RELATED:
            _change_related(ticket, name, value, changes)
            continue
        if name not in _SETTABLE:
            raise InvalidChange(f"cannot change {name!r}")
        old = getattr(ticket, name)
        if old != value:
            changes[name] = (old, value)
            setattr(ticket, name, value)
    if "status" in changes:
        _stamp_status(ticket, changes["status"][1], now)
    if changes and (at is None or ticket.updated_at is None or now > ticket.updated_at):
        ticket.updated_at = now
    return changes


_CHOICES: dict[str, tuple[str, ...]] = {"status": STATUSES, "priority": PRIORITIES, "type": TYPES}
# field -> (foreign key column, relationship or None, what the change records of the row)
_RELATED: dict[str, tuple[str, str | None, str]] = {
    "assignee": ("assignee_id", "assignee", "email"), "organisation": ("organisation_id", "organisation", "name"),
    "merged_into": ("merged_into_id", None, "number")}


def _change_related(ticket: Ticket, name: str, value: Any, changes: dict[str, tuple[Any, Any]]) -> None:
    """A many-to-one field set to a row (or None); the change records the rows' email, name or number."""
    column, rel, shown = _RELATED[name]
    old_id = getattr(ticket, column)
    new_id = value.id if value is not None else None
    if old_id == new_id:
        return
    old = getattr(ticket, rel) if rel else None
    old_shown = getattr(old, shown) if old is not None else (None if old_id is None else old_id)
    changes[name] = (old_shown, getattr(value, shown) if value is not None else None)
    setattr(ticket, column, new_id)
    if rel:
        setattr(ticket, rel, value)
_SETTABLE = frozenset({"status", "priority", "type", "group", "tags", "remind_at"})


def _stamp_status(ticket: Ticket, status: str, now: datetime) -> None:
    """closed_at / resolved_at after a change of status."""
    if status == "closed":
        ticket.closed_at = now
        ticket.resolved_at = ticket.resolved_at or now
    elif status == "resolved":
        ticket.resolved_at = now
    else:
        ticket.closed_at = None
        ticket.resolved_at = None
