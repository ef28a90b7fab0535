"""The store seam: the questions the pipeline's handlers ask of the store, and the writes they make.

Two implementations: `gateway.store.sql.SqlStore` (SQLAlchemy, SQLite and PostgreSQL: it owns every speed-up)
and `gateway.store.memory.InMemoryStore` (dicts: the handlers' unit tests). A handler asks `ctx.store` and never
learns which one answered, nor whether the answer was looked up now, loaded ahead for a batch, or remembered
from earlier in the transaction.

The handlers also *declare* what they will ask (a module-level `asks(Upcoming, config) -> Asks`), so that a
batch can look it up ahead for many mails at once (`SqlStore.prefetch`); nothing else depends on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.events import Event
    from gateway.mime import ParsedMail
    from gateway.models import Comment, Contact, InboundMail, Ticket, TimeEntry

MAX_PER_MAIL = 200  # addresses or Message-IDs declared ahead for one mail (mail input: bounded)


def msgid_claim(message_id: str, sender: str) -> str:
    """The dedupe claim on a (Message-ID, sender) pair, as stored in inbound_mail.claim_msgid."""
    return hashlib.sha256(f"{message_id}\x00{sender}".encode("utf-8", "surrogatepass")).hexdigest()


def msgid_claim_of(message_id: str | None, from_addr: str | None, envelope_from: str | None) -> str | None:
    """The Message-ID claim of a mail: hash(Message-ID, sender), None without a Message-ID."""
    sender = (from_addr or envelope_from or "").lower()
    return msgid_claim(message_id, sender) if message_id else None


def stored_forms(message_ids: Sequence[str]) -> dict[str, str]:
    """The forms a Message-ID may have on a mail row not threaded yet -> the Message-ID: as parsed, and with
    its angle brackets (the listing hint a transport stored, gateway.intake; threading writes the parsed one)."""
    out: dict[str, str] = {}
    for mid in message_ids:
        out.setdefault(mid, mid)
        out.setdefault(f"<{mid}>", mid)
    return out


@dataclass(frozen=True)
class Originals:
    """See `Store.originals`; both in the order of the Message-IDs asked about."""

    waiting: list[tuple[str, int]]  # (Message-ID, mail id): stored, not threaded yet
    threaded: list[str]             # Message-IDs a ticket knows


@dataclass(frozen=True)
class ClaimHolder:
    """The first mail that holds a dedupe claim a new mail would take."""

    mail_id: int
    claim_sha256: str | None
    outcome: str
    ticket_number: int | None  # its ticket, if it still exists


@dataclass(frozen=True)
class Upcoming:
    """A mail of a batch, before it runs: what a handler may declare lookups from."""

    parsed: ParsedMail
    sha256: str
    envelope_from: str | None
    received_at: datetime | None = None  # a stored mail's (None: a new mail, stored with its outcome)


@dataclass
class Asks:
    """What the handlers will ask the store for a few mails, declared ahead (see `asks`)."""

    claims: list[tuple[str, str | None]] = field(default_factory=list)  # (sha256, Message-ID claim)
    emails: list[str] = field(default_factory=list)       # contacts by address
    senders: list[str] = field(default_factory=list)      # the mails' senders (listeners: rate caps)
    message_ids: list[str] = field(default_factory=list)  # tickets by Message-ID
    numbers: list[int] = field(default_factory=list)      # tickets by number
    made_by: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # (sender, since, until): the
    #                                                       tickets and comments a sender made then (`mails_made_by`)

    def add(self, other: Asks) -> None:
        self.claims += other.claims
        self.emails += other.emails
        self.senders += other.senders
        self.message_ids += other.message_ids
        self.numbers += other.numbers
        self.made_by += other.made_by


Declare = Callable[[Upcoming, Any], Asks]  # a handler's `asks(upcoming, config)`


class Flow(Protocol):
    """The staff commands' rules (gateway.workflow.Workflow), as the `act` handler uses them."""

    def ticket(self, number: int) -> Ticket: ...

    def staff(self, email: str) -> Contact: ...

    def set_fields(self, t: Ticket, *, by: Contact | None = None, **fields: Any) -> dict[str, tuple[Any, Any]]: ...

    def link(self, t: Ticket, other: Ticket, kind: str) -> tuple[str, bool]: ...

    def log_time(self, t: Ticket, minutes: int | str, *, by: Contact | None = None, note: str = "",
                 at: datetime | None = None) -> TimeEntry: ...

    def time_total(self, t: Ticket) -> int: ...

    def watch(self, t: Ticket, email: str) -> bool: ...

    def unwatch(self, t: Ticket, email: str) -> bool: ...


class Store(Protocol):
    """What the handlers ask and write, for one mail inside the caller's transaction."""

    # The mail itself -------------------------------------------------------------------------------------
    def mail_id(self, mail: InboundMail) -> int:
        """The mail row's id, the row written first if it is not yet."""
        ...

    def emit(self, event: Event) -> None:
        """Tell the listeners (notifications, SLA) in this transaction."""
        ...

    # Dedupe ----------------------------------------------------------------------------------------------
    def claim_holder(self, sha256: str, msgid_claim: str | None, own_id: int | None) -> ClaimHolder | None:
        """The first mail (other than `own_id`) holding the bytes claim or the Message-ID claim."""
        ...

    def claim(self, mail: InboundMail, sha256: str, msgid_claim: str | None) -> None:
        """This mail holds both claims now (a concurrent winner makes the write fail: IntegrityError)."""
        ...

    # People ----------------------------------------------------------------------------------------------
    def contact(self, email: str) -> Contact | None: ...

    def register(self, email: str, *, name: str = "", correspondent: bool = False, auto_registered: bool = False,
                 flush: bool = True) -> Contact:
        """A new contact for an address `contact()` found nobody for (see gateway.tickets.Directory.register)."""
        ...

    def add_contact(self, email: str, *, name: str = "") -> Contact: ...

    def mails_made_by(self, sender: str, since: datetime, until: datetime) -> int:
        """Tickets and comments made by mails from `sender` that arrived in [since, until] (the flood cap)."""
        ...

    # Tickets ---------------------------------------------------------------------------------------------
    def ticket(self, number: int) -> Ticket | None: ...

    def tickets_by_message_ids(self, ids: Sequence[str]) -> list[tuple[str, Ticket]]:
        """Tickets that know any of these Message-IDs, in the order of `ids` (most relevant first)."""
        ...

    def followed(self, ticket: Ticket) -> Ticket:
        """The ticket a merged ticket was merged into (along the chain), else the ticket itself."""
        ...

    def originals(self, message_ids: Sequence[str], own_id: int | None) -> Originals:
        """What became of the mails with these Message-IDs (the `wait` handler: a reply's original), seen at one
        moment (one statement): the stored mails not threaded yet, other than `own_id`, and the Message-IDs a
        ticket knows."""
        ...

    def is_participant(self, ticket: Ticket, contact: Contact | None, email: str | None) -> str | None: ...

    def token_issued(self, token: str) -> bool:
        """Was this reply token issued to anybody (an outgoing mail carries it)?"""
        ...

    # Writes ----------------------------------------------------------------------------------------------
    def create_ticket(self, *, subject: str, reporter: Contact, sender_email: str | None, description: str,
                      description_full: str, description_html: str | None, priority: str, type: str,
                      group: str | None, source_mail: InboundMail, at: datetime | None, message_ids: list[str],
                      watchers: Sequence[tuple[Contact, str | None]]) -> Ticket: ...

    def add_comment(self, ticket: Ticket, *, author: Contact | None, author_email: str | None, body: str,
                    full_text: str = "", html: str | None = None, internal: bool = False, source: str = "mail",
                    mail: InboundMail | None = None, at: datetime | None = None,
                    seen_by: Iterable[str] = ()) -> Comment: ...

    def add_watcher(self, ticket: Ticket, contact: Contact, *, vouched: str | None = None) -> bool: ...

    def link(self, ticket: Ticket, other: Ticket, *, kind: str, reason: str) -> None: ...

    def remember_message_id(self, ticket: Ticket, message_id: str | None) -> None: ...

    def change(self, ticket: Ticket, *, by: Contact | None, at: datetime | None,
               **fields: Any) -> dict[str, tuple[Any, Any]]: ...

    def unsubscribe(self, secret: bytes, token: str) -> tuple[Ticket, str] | None:
        """Remove the watcher a signed unsubscribe token names: (ticket, its address), or None."""
        ...

    def put_blob(self, data: bytes) -> str:
        """Store an attachment's bytes (content-addressed); its sha256."""
        ...

    def add_attachments(self, rows: list[dict[str, Any]]) -> None:
        """Attachment rows (plain values, gateway.models.Attachment's columns)."""
        ...

    def workflow(self) -> Flow:
        """The rules staff commands go through (gateway.workflow), in this transaction."""
        ...
