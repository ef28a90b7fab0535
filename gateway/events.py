"""Domain events, delivered to the App's listeners inside the transaction that caused them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from gateway.models import Comment, Contact, Ticket


@dataclass
class Origin:
    """Where an event comes from. imported: an import of old mail, dated in the past (gateway.history): the
    SLA records what was already due at the import without escalating it. quiet: nothing is mailed for it
    (`ingest` without --notify)."""

    imported: bool = field(default=False, kw_only=True)
    quiet: bool = field(default=False, kw_only=True)


@dataclass
class TicketCreated(Origin):
    ticket: Ticket
    mail_id: int | None = None  # the inbound mail that opened it, if any
    auto: bool = False  # opened from an automated source


@dataclass
class CommentAdded(Origin):
    ticket: Ticket
    comment: Comment
    mail_id: int | None = None
    seen_by: frozenset[str] = frozenset()  # addresses that had the mail itself (its To/Cc): not mailed again


@dataclass
class TicketChanged(Origin):
    ticket: Ticket
    changes: dict[str, tuple[Any, Any]]  # field -> (old, new)
    by: Contact | None = None
    at: datetime | None = None


@dataclass
class WatcherAdded(Origin):
    ticket: Ticket
    contact: Contact
    vouched: str | None = None  # why the gateway may mail them (gateway.guard.relay); None: it may not


@dataclass
class MailIgnored(Origin):
    mail_id: int
    kind: str  # auto_reply | bounce | bulk | list | loop
    reason: str
    ticket: Ticket | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MailRejected(Origin):
    mail_id: int
    sender: str | None
    reason: str


@dataclass
class CommandsDone(Origin):
    """A staff member's mail commands were applied (handlers/act.py): what changed, what was refused and why."""

    ticket: Ticket
    by: Contact
    done: list[str]
    refused: list[tuple[str, str]]  # (the command line, why)
    mail_id: int | None = None


Event = TicketCreated | CommentAdded | TicketChanged | WatcherAdded | MailIgnored | MailRejected | CommandsDone


class Listener(Protocol):
    def __call__(self, session: Session, event: Event) -> None: ...


Listeners = list[Callable[[Session, Event], None]]
