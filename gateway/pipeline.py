"""The create-or-comment pipeline: small named handlers, their order as data, one place for consequences.

Each handler is `handle(ctx: MailContext) -> None` in `gateway.handlers.<name>` (the top-level `handlers/`
folder). A handler ends the pipeline by raising a typed outcome from `gateway.outcomes`. `run` is the one
place that catches them: it returns a `Decision` (the outcome, its reason, and whether what the handlers wrote
is kept), for every path a mail takes (gateway.intake applies it).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from gateway.clock import Clock
from gateway.config import Config
from gateway.db import is_unavailable
from gateway.models import Comment, Contact, InboundMail, Ticket
from gateway.outcomes import Ignore, Outcome, Reject, TryLater, Wait
from gateway.store.ahead import Ahead
from gateway.store.base import Asks, Declare, Store, Upcoming

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
    "blocked",      # a contact an admin blocked (users block): quarantined with the reason
    "flood",        # more than limits.mails_per_sender_per_hour from one sender: quarantined ('flood')
    "token",        # our own mail coming back is a loop; a signed reply address names its ticket
    "match",        # which ticket: In-Reply-To/References, subject tag; participants only
    "wait",         # a reply whose original is stored but not threaded yet waits for it (bounded)
    "route",        # defaults for a new ticket (group, priority, type) from the recipient address
    "extract",      # visible text (quotes and signatures stripped), full text, sanitised HTML
    "commands",     # staff: /command lines at the top are taken out; /internal or the note address: a note
    "thread",       # create the ticket or add the comment; Cc -> watchers
    "attachments",  # store attachments content-addressed, linked to the ticket/comment
    "act",          # staff: the commands applied to the ticket, confirmed to the sender by one mail
)

log = logging.getLogger("gateway.intake")

Handler = Callable[["MailContext"], None]


def load_handlers(names: Sequence[str]) -> list[tuple[str, Handler]]:
    out = []
    for name in names:
        module = importlib.import_module(f"gateway.handlers.{name}")
        out.append((name, module.handle))
    return out


def declared(handlers: Sequence[tuple[str, Handler]], upcoming: Sequence[Upcoming], config: Config) -> Asks:
    """What these handlers will ask the store for these mails: each handler module's `asks(upcoming, config)`
    (gateway.store.base), mail by mail, in the pipeline's order (gateway.store.sql.prefetch looks it up ahead)."""
    declares: list[Declare] = []
    for _name, handler in handlers:
        ask = getattr(sys.modules.get(handler.__module__), "asks", None)
        if ask is not None:
            declares.append(ask)
    out = Asks()
    for mail in upcoming:
        for ask in declares:
            out.add(ask(mail, config))
    return out


@dataclass
class MailContext:
    """Everything a handler may read or write for one mail."""

    store: Store                        # every question to the store, every write (gateway.store)
    config: Config
    clock: Clock
    mail: InboundMail
    # the raw mail; of a stored mail of engine.SPILL_BYTES or more that the worker parsed, only its header block
    # (engine.HEAD_BYTES: what gateway.auth reads; the parse is the worker's, `ahead`)
    raw: bytes
    ahead: Ahead = field(default_factory=Ahead)  # the pure work done ahead (parse, HTML, classify, blobs)
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
    auth: Any = None                    # gateway.auth.AuthResult: the sender authentication (handler authenticate)
    commands: Any = None                # gateway.mailcommands.Parsed: a staff member's commands (handler commands)
    internal: str = ""                  # why this staff mail is an internal note ("": a public comment)
    historic: bool = False              # an import of old mail: dated by its Date, nothing mailed (gateway.history)
    may_wait: bool = False              # a stored mail, threaded again later if it waits (the `wait` handler)

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
        """The mail row's id, the row written (the store writes it on first use where it is not yet)."""
        return self.store.mail_id(self.mail)


@dataclass(frozen=True)
class Decision:
    """What follows from running the pipeline over one mail.

    outcome: recorded on the mail (ticket, comment, ignored, duplicate, rejected, quarantined), or 'received'
    for a temporary condition (`retry`: nothing is recorded, the mail is tried again later).
    keep: what the handlers wrote stays (a ticket, a comment, a bounce note); False: it is rolled back and only
    the mail row is written, with its outcome.
    rejected: listeners hear of it (gateway.events.MailRejected).
    wait: the mail waits for another one (gateway.outcomes.Wait): it stays 'received', its try not counted."""

    outcome: str
    reason: str | None = None
    keep: bool = True
    rejected: bool = False
    retry: bool = False
    wait: bool = False


def decide(outcome: Outcome) -> Decision:
    """The consequence of a typed outcome."""
    if isinstance(outcome, Ignore):  # keeps what handlers wrote (a bounce note on its ticket)
        return Decision(outcome.outcome, outcome.reason, keep=True)
    if isinstance(outcome, TryLater):
        return Decision("received", outcome.reason, keep=False, retry=True)
    if isinstance(outcome, Wait):
        return Decision("received", outcome.reason, keep=False, wait=True)
    return Decision(outcome.outcome, outcome.reason, keep=False, rejected=isinstance(outcome, Reject))


def failed(ctx: MailContext, e: Exception) -> Decision:
    """A handler failed (not a typed outcome): the mail is quarantined with the error, nothing else is kept."""
    ctx.note("traceback: " + "".join(traceback.format_exception_only(type(e), e)).strip()[:1000])
    return Decision("quarantined", f"internal error in pipeline: {type(e).__name__}: {e}"[:2000], keep=False)


def run(ctx: MailContext, handlers: Sequence[tuple[str, Handler]]) -> Decision:
    """Every handler in order; the one place that catches the typed outcomes. A conflict with a concurrent
    writer (IntegrityError: run the mail again) and an unavailable store propagate."""
    try:
        for _name, handler in handlers:
            handler(ctx)
    except Outcome as o:
        return decide(o)
    except IntegrityError:
        raise
    except Exception as e:  # noqa: BLE001 -- every other failure quarantines the mail
        if is_unavailable(e):
            raise
        log.exception("mail %s: pipeline failed", ctx.mail.id)
        return failed(ctx, e)
    return Decision("ticket" if ctx.created else "comment")
