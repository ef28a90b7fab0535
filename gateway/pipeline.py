"""The create-or-comment pipeline: small named handlers, their order as data, one place for consequences.

Each handler is `handle(ctx: MailContext) -> None` in `gateway.handlers.<name>` (the top-level `handlers/`
folder). A handler ends the pipeline by raising a typed outcome from `gateway.outcomes`; `run` returns the
final outcome ('ticket' or 'comment') when every handler has run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from gateway.blobs import BlobStore
from gateway.clock import Clock
from gateway.config import Config
from gateway.models import Comment, Contact, InboundMail, Ticket
from gateway.tickets import Directory, Tickets

if TYPE_CHECKING:
    from gateway.autoreply import Verdict
    from gateway.mime import ParsedMail

# The order of the built-in pipeline. One place; names are modules in handlers/.
BUILTIN: tuple[str, ...] = (
    "parse",        # raw bytes -> ParsedMail (guards: depth, part count, charsets)
    "dedupe",       # the same mail again makes nothing new
    "unsubscribe",  # a watcher's signed unsubscribe address (List-Unsubscribe): that watcher is removed, ignored
    "classify",     # auto-replies, bounces, bulk and list mail are ignored
    "authenticate", # sender authentication (DMARC/DKIM/SPF, trusted Authentication-Results); a failure quarantines
    "identify",     # who wrote it: known contact, or the unknown-sender policy
    "flood",        # more than limits.mails_per_sender_per_hour from one sender: quarantined ('flood')
    "token",        # our own mail coming back is a loop; a signed reply address names its ticket
    "match",        # which ticket: In-Reply-To/References, subject tag; participants only
    "route",        # defaults for a new ticket (group, priority, type) from the recipient address
    "extract",      # visible text (quotes and signatures stripped), full text, sanitised HTML
    "thread",       # create the ticket or add the comment; Cc -> watchers
    "attachments",  # store attachments content-addressed, linked to the ticket/comment
)

Handler = Callable[["MailContext"], None]


def load_handlers(names: Sequence[str]) -> list[tuple[str, Handler]]:
    out = []
    for name in names:
        module = importlib.import_module(f"gateway.handlers.{name}")
        out.append((name, module.handle))
    return out


@dataclass
class MailContext:
    """Everything a handler may read or write for one mail."""

    session: Session
    config: Config
    clock: Clock
    blobs: BlobStore
    tickets: Tickets
    directory: Directory
    mail: InboundMail
    raw: bytes
    dry_run: bool = False
    parsed: ParsedMail | None = None
    verdict: Verdict | None = None
    sender_email: str | None = None     # the address that wrote the mail
    sender_name: str = ""
    sender: Contact | None = None       # the sender's contact, if known or registered
    reporter: Contact | None = None     # who a new ticket is opened for
    ticket: Ticket | None = None        # matched ticket (None: a new ticket is opened)
    related: Ticket | None = None       # a ticket the mail named but may not join (linked instead)
    related_kind: str = "related"
    related_reason: str = ""
    routing: dict[str, Any] = field(default_factory=dict)  # defaults from the recipient address
    body: str = ""                      # visible text
    full_text: str = ""
    html: str | None = None             # sanitised
    comment: Comment | None = None
    created: bool = False
    trace: list[str] = field(default_factory=list)
    prepared: Any = None                # gateway.prepare.Prepared: the pure work done ahead (batch imports)
    auth: Any = None                    # gateway.auth.AuthResult: the sender authentication (handler authenticate)
    historic: bool = False              # an import of old mail: dated by its Date, nothing mailed (gateway.history)

    def written_at(self) -> datetime | None:
        """When the mail's ticket or comment happened: its Date for an import of old mail, where plausible
        (gateway.history); None (now) for live mail."""
        if not self.historic or self.parsed is None:
            return None
        from gateway.history import written_at

        return written_at(self.parsed.date, self.clock())

    def note(self, text: str) -> None:
        self.trace.append(text)

    @property
    def mail_id(self) -> int:
        """The mail row's id, the row written. A batch import writes its row as late as it can (the dedupe claims
        and, for a mail that ends early, the outcome then go into its one INSERT): the first use writes it."""
        state = inspect(self.mail)
        if not state.persistent:
            if state.transient:
                self.session.add(self.mail)
            self.session.flush()
        return self.mail.id


def run(ctx: MailContext, handlers: Sequence[tuple[str, Handler]]) -> str:
    for name, handler in handlers:
        handler(ctx)
    return "ticket" if ctx.created else "comment"
