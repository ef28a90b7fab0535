"""InMemoryStore: the store seam (gateway.store.base.Store) on plain dicts, for the handlers' unit tests.

Like procrastinate's InMemoryConnector beside its PostgreSQL connector: the same questions answered from Python
structures, so that a handler runs alone, without a database, with a fixed clock. The objects are the real
model classes (gateway.models), never written anywhere; the domain rules are the real ones (the pure parts of
gateway.tickets and gateway.workflow); only the lookups and the writes are this module's.

Not modelled: concurrent writers (no unique-constraint races), rollbacks (a test that needs them uses the SQL
store), listeners (events are kept in `events`, in order, for a test to look at).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from gateway import ourmail
from gateway.clock import Clock
from gateway.events import (
    CommentAdded,
    Event,
    TicketChanged,
    TicketCreated,
    WatcherAdded,
)
from gateway.models import (
    PRIORITIES,
    TYPES,
    Comment,
    Contact,
    InboundMail,
    Organisation,
    Ticket,
    TicketLink,
    TimeEntry,
)
from gateway.store.base import ClaimHolder, Flow, Originals, stored_forms
from gateway.tickets import (
    MAX_MERGE_HOPS,
    InvalidChange,
    apply_change,
    commented,
    normalise_email,
    participant_reason,
    watched,
    watcher_of_token,
)
from gateway.workflow import DONE, Workflow

MADE = ("ticket", "comment")  # the outcomes the flood cap counts (as gateway.store.sql)


class InMemoryStore:
    """gateway.store.base.Store on dicts. Seed it with `add_contact`, `add_organisation`, `open_ticket`,
    `add_mail`, `issue_token`; read what handlers did in `tickets`, `comments`, `attachments`, `links`,
    `message_ids`, `blobs`, `events`."""

    def __init__(self, clock: Clock, *, refuse_close_while_blocked: bool = True) -> None:
        self.clock = clock
        self.refuse_close_while_blocked = refuse_close_while_blocked
        self.contacts: dict[str, Contact] = {}
        self.organisations: dict[str, Organisation] = {}       # by domain
        self.tickets: dict[int, Ticket] = {}                    # by number
        self.mails: dict[int, InboundMail] = {}                 # by id
        self.comments: list[Comment] = []
        self.attachments: list[dict[str, Any]] = []
        self.links: list[TicketLink] = []
        self.time_entries: list[TimeEntry] = []
        self.message_ids: dict[str, list[int]] = {}             # Message-ID -> ids of the tickets that know it
        self.issued_tokens: set[str] = set()
        self.blobs: dict[str, bytes] = {}
        self.events: list[Event] = []
        self._ids = itertools.count(1)
        self._numbers = itertools.count(1)

    def _id(self) -> int:
        return next(self._ids)

    # Seeding ---------------------------------------------------------------------------------------------
    def add_organisation(self, name: str, domains: Iterable[str] = (), *, visibility: str = "reporter-only"
                         ) -> Organisation:
        org = Organisation(id=self._id(), name=name, visibility=visibility, created_at=self.clock())
        for d in domains:
            self.organisations[d.lower()] = org
        return org

    def open_ticket(self, reporter: Contact, subject: str = "A ticket", **fields: Any) -> Ticket:
        """A ticket as if opened earlier (no event); fields: any Ticket column (status, closed_at, ...)."""
        t = self.create_ticket(subject=subject, reporter=reporter, sender_email=None, description="",
                               description_full="", description_html=None, priority="medium", type="incident",
                               group=None, source_mail=None, at=None, message_ids=fields.pop("message_ids", []),
                               watchers=())
        for name, value in fields.items():
            setattr(t, name, value)
        self.events.clear()
        return t

    def add_mail(self, mail: InboundMail) -> InboundMail:
        """A mail processed earlier (its outcome, claims, sender, received_at as given)."""
        self.mail_id(mail)
        return mail

    def issue_token(self, token: str) -> None:
        """A reply token an outgoing mail carried."""
        self.issued_tokens.add(token)

    # The mail itself -------------------------------------------------------------------------------------
    def mail_id(self, mail: InboundMail) -> int:
        if mail.id is None:
            mail.id = self._id()
        self.mails[mail.id] = mail
        return mail.id

    def emit(self, event: Event) -> None:
        self.events.append(event)

    # Dedupe ----------------------------------------------------------------------------------------------
    def claim_holder(self, sha256: str, msgid_claim: str | None, own_id: int | None) -> ClaimHolder | None:
        for mid in sorted(self.mails):
            m = self.mails[mid]
            if mid != own_id and (m.claim_sha256 == sha256 or (msgid_claim and m.claim_msgid == msgid_claim)):
                ticket = self._by_id(m.ticket_id) if m.ticket_id is not None else None
                return ClaimHolder(mid, m.claim_sha256, m.outcome, ticket.number if ticket else None)
        return None

    def claim(self, mail: InboundMail, sha256: str, msgid_claim: str | None) -> None:
        mail.claim_sha256 = sha256
        mail.claim_msgid = msgid_claim

    # People ----------------------------------------------------------------------------------------------
    def contact(self, email: str) -> Contact | None:
        return self.contacts.get(normalise_email(email))

    def register(self, email: str, *, name: str = "", correspondent: bool = False, auto_registered: bool = False,
                 flush: bool = True, staff: bool = False) -> Contact:
        email = normalise_email(email)
        org = None if correspondent else self.organisations.get(email.rpartition("@")[2])
        role = "staff" if staff else "correspondent" if correspondent else "customer"
        c = Contact(id=self._id(), email=email, name=name, role=role, organisation=org,
                    organisation_id=org.id if org else None, auto_registered=auto_registered, undeliverable=False,
                    created_at=self.clock(), vouched=None, blocked=False, blocked_reason=None)
        self.contacts[email] = c
        return c

    def add_contact(self, email: str, *, name: str = "", staff: bool = False, **columns: Any) -> Contact:
        """The contact (made if new); staff: made staff; columns: any Contact column (blocked, vouched, ...)."""
        c = self.contact(email) or self.register(email, name=name, staff=staff)
        if staff:
            c.role = "staff"
        for key, value in columns.items():
            setattr(c, key, value)
        return c

    def mails_made_by(self, sender: str, since: datetime, until: datetime) -> int:
        return sum(1 for m in self.mails.values() if m.sender == sender.lower() and m.outcome in MADE
                   and since <= m.received_at <= until)

    # Tickets ---------------------------------------------------------------------------------------------
    def _by_id(self, ticket_id: int | None) -> Ticket | None:
        return next((t for t in self.tickets.values() if t.id == ticket_id), None)

    def ticket(self, number: int) -> Ticket | None:
        return self.tickets.get(number)

    def tickets_by_message_ids(self, ids: Sequence[str]) -> list[tuple[str, Ticket]]:
        ids = list(ids)[:200]
        order = {mid: i for i, mid in enumerate(ids)}
        rows = [(mid, tid) for mid in dict.fromkeys(ids) for tid in self.message_ids.get(mid, [])]
        out = []
        for mid, tid in sorted(rows, key=lambda r: (order[r[0]], -r[1])):
            t = self._by_id(tid)
            if t is not None:
                out.append((mid, t))
        return out

    def followed(self, ticket: Ticket) -> Ticket:
        seen = {ticket.id}
        for _ in range(MAX_MERGE_HOPS):
            nxt = self._by_id(ticket.merged_into_id) if ticket.merged_into_id is not None else None
            if nxt is None or nxt.id in seen:
                return ticket
            seen.add(nxt.id)
            ticket = nxt
        return ticket

    def is_participant(self, ticket: Ticket, contact: Contact | None, email: str | None) -> str | None:
        return participant_reason(ticket, contact, email)

    def originals(self, message_ids: Sequence[str], own_id: int | None) -> Originals:
        forms = stored_forms(message_ids)
        order = {mid: i for i, mid in enumerate(message_ids)}
        found = [(forms[m.message_id], i) for i, m in sorted(self.mails.items())
                 if i != own_id and m.outcome == "received" and m.message_id in forms]
        return Originals(sorted(found, key=lambda r: order[r[0]]),
                         [mid for mid in dict.fromkeys(message_ids) if self.message_ids.get(mid)])

    def token_issued(self, token: str) -> bool:
        return token in self.issued_tokens

    # Writes ----------------------------------------------------------------------------------------------
    def create_ticket(self, *, subject: str, reporter: Contact, sender_email: str | None, description: str,
                      description_full: str, description_html: str | None, priority: str, type: str,
                      group: str | None, source_mail: InboundMail | None, at: datetime | None,
                      message_ids: list[str], watchers: Sequence[tuple[Contact, str | None]]) -> Ticket:
        if priority not in PRIORITIES:
            raise InvalidChange(f"unknown priority {priority!r}")
        if type not in TYPES:
            raise InvalidChange(f"unknown type {type!r}")
        now = at or self.clock()
        t = Ticket(id=self._id(), number=next(self._numbers), subject=subject or "(no subject)", status="open",
                   priority=priority, type=type, reporter=reporter, reporter_id=reporter.id,
                   sender_email=normalise_email(sender_email) if sender_email else reporter.email,
                   organisation_id=reporter.organisation_id, organisation=reporter.organisation, group=group,
                   tags=[], description=description, description_full=description_full or description,
                   description_html=description_html, created_at=now, updated_at=now, watchers=[],
                   merged_into_id=None, customer_spoke_last=True, closed_at=None, resolved_at=None, remind_at=None,
                   assignee_id=None, assignee=None,
                   source_mail_id=self.mail_id(source_mail) if source_mail is not None else None)
        self.tickets[t.number] = t
        for mid in dict.fromkeys(m for m in message_ids if m):
            self.message_ids.setdefault(mid, []).append(t.id)
        for contact, vouched in watchers:
            watched(t, contact, vouched, now)
            self.emit(WatcherAdded(t, contact, vouched))
        self.emit(TicketCreated(t, mail_id=t.source_mail_id))
        return t

    def add_comment(self, ticket: Ticket, *, author: Contact | None, author_email: str | None, body: str,
                    full_text: str = "", html: str | None = None, internal: bool = False, source: str = "mail",
                    mail: InboundMail | None = None, at: datetime | None = None,
                    seen_by: Iterable[str] = ()) -> Comment:
        now = at or self.clock()
        c = Comment(id=self._id(), ticket_id=ticket.id, author=author, author_id=author.id if author else None,
                    author_email=normalise_email(author_email) if author_email else (author.email if author else None),
                    body=body, full_text=full_text or body, html=html, internal=internal,
                    by_staff=bool(author and author.is_staff), source=source, inbound_mail=mail,
                    inbound_mail_id=self.mail_id(mail) if mail is not None else None, created_at=now)
        commented(ticket, c, now, at=at)
        self.comments.append(c)
        self.emit(CommentAdded(ticket, c, mail_id=c.inbound_mail_id,
                               seen_by=frozenset(normalise_email(a) for a in seen_by if a)))
        return c

    def add_watcher(self, ticket: Ticket, contact: Contact, *, vouched: str | None = None) -> bool:
        done = watched(ticket, contact, vouched, self.clock())
        if done is not None:
            self.emit(WatcherAdded(ticket, contact, vouched))
        return done == "added"

    def link(self, ticket: Ticket, other: Ticket, *, kind: str, reason: str) -> None:
        if not any(x.ticket_id == ticket.id and x.other_ticket_id == other.id and x.kind == kind for x in self.links):
            self.links.append(TicketLink(id=self._id(), ticket_id=ticket.id, other_ticket_id=other.id, kind=kind,
                                         reason=reason, created_at=self.clock()))

    def remember_message_id(self, ticket: Ticket, message_id: str | None) -> None:
        if message_id and ticket.id not in self.message_ids.setdefault(message_id, []):
            self.message_ids[message_id].append(ticket.id)

    def change(self, ticket: Ticket, *, by: Contact | None, at: datetime | None,
               **fields: Any) -> dict[str, tuple[Any, Any]]:
        now = at or self.clock()
        changes = apply_change(ticket, fields, now, at=at)
        if changes:
            self.emit(TicketChanged(ticket, changes, by=by, at=now))
        return changes

    def unsubscribe(self, secret: bytes, token: str) -> tuple[Ticket, str] | None:
        parsed = ourmail.parse_unsubscribe_token(token)
        ticket = self.ticket(parsed.number) if parsed is not None else None
        w = watcher_of_token(ticket, secret, token) if ticket is not None else None
        if ticket is None or w is None:
            return None
        ticket.watchers.remove(w)
        return ticket, w.contact.email

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def add_attachments(self, rows: list[dict[str, Any]]) -> None:
        self.attachments.extend(rows)

    def workflow(self) -> Flow:
        return MemoryFlow(self)


class _Tickets:
    """What gateway.workflow.Workflow asks of gateway.tickets.Tickets, on the in-memory store."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store

    def get(self, number: int) -> Ticket | None:
        return self.store.ticket(number)

    def change(self, ticket: Ticket, *, by: Contact | None = None, at: datetime | None = None,
               **fields: Any) -> dict[str, tuple[Any, Any]]:
        return self.store.change(ticket, by=by, at=at, **fields)

    def add_watcher(self, ticket: Ticket, contact: Contact, *, vouched: str | None = None) -> bool:
        return self.store.add_watcher(ticket, contact, vouched=vouched)

    def link(self, ticket: Ticket, other: Ticket, *, kind: str = "related", reason: str = "") -> None:
        self.store.link(ticket, other, kind=kind, reason=reason)


class _Directory:
    """What gateway.workflow.Workflow asks of gateway.tickets.Directory, on the in-memory store."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store

    def contact(self, email: str) -> Contact | None:
        return self.store.contact(email)

    def register(self, email: str, *, correspondent: bool = False) -> Contact:
        return self.store.register(email, correspondent=correspondent)

    def organisation(self, name: str) -> Organisation | None:
        return next((o for o in self.store.organisations.values() if o.name == name), None)


class MemoryFlow(Workflow):
    """gateway.workflow.Workflow's rules (the same code) over the in-memory store: only its queries and writes
    are answered here."""

    def __init__(self, store: InMemoryStore) -> None:
        # the rules read self.tickets, self.directory, self.clock and the configured close rule only
        self.store = store
        self.clock = store.clock
        self.tickets = _Tickets(store)  # type: ignore[assignment]
        self.directory = _Directory(store)  # type: ignore[assignment]
        self.refuse_close_while_blocked = store.refuse_close_while_blocked

    def blockers(self, t: Ticket) -> list[Ticket]:
        out = [self.store._by_id(x.ticket_id) for x in self.store.links
               if x.other_ticket_id == t.id and x.kind == "blocks"]
        return sorted((b for b in out if b is not None and b.status not in DONE),
                      key=lambda b: b.number)

    def _linked(self, ticket_id: int, other_ticket_id: int, kind: str) -> bool:
        return any(x.ticket_id == ticket_id and x.other_ticket_id == other_ticket_id and x.kind == kind
                   for x in self.store.links)

    def _link_count(self, t: Ticket) -> int:
        return sum(1 for x in self.store.links if t.id in (x.ticket_id, x.other_ticket_id))

    def _write(self, row: Any | None) -> None:
        if isinstance(row, TimeEntry):
            row.id = self.store._id()
            self.store.time_entries.append(row)

    def time_total(self, t: Ticket) -> int:
        return sum(e.minutes for e in self.store.time_entries if e.ticket_id == t.id)
