"""The event listener: turns ticket events into outbox rows, inside the transaction that caused them.

Who gets what (each recipient gets a copy of their own: a personal signed Reply-To/VERP address and a
Message-ID remembered against the ticket, so every reply threads back):
* TicketCreated: acknowledgement to the reporter (the real sender under 'default-reporter'); new-ticket notice
  to every staff contact.
* CommentAdded: public -> reporter, watchers, assignee; a customer's public comment also -> the staff that
  `staff.notify` (or its group's `notify`) names: the assignee, else the group's members, else every staff
  contact; internal -> assignee and staff watchers. Never to the author, never to the gateway's own
  addresses, undeliverable contacts or automatic (noreply, daemon) addresses. System notes (bounce summaries)
  send nothing.
* CommandsDone: one confirmation to the staff member whose mail held commands (what changed, what was
  refused and why), Auto-Submitted: auto-replied.

Mail to staff is a round of its own, never held back by the loop caps meant for customers
(notifications.max_per_ticket_10min, max_per_recipient_day); staff.max_notices_per_ticket_hour bounds it per
ticket. Every copy to staff carries the ticket's note address for that staff member (staff.note_subaddress):
shown in the text, and the Reply-To of internal-note notices, so that a reply to a note stays a note.
* TicketChanged: status resolved/closed/pending -> reporter and watchers; new assignee -> the assignee.
* MailRejected: one polite notice per sender per day.
* MailIgnored (bounce): a permanent failure reported to one of our VERP addresses marks the contact the
  token was issued to undeliverable.
* Nothing for a quiet event: an import of old mail (`ingest` of files, Maildirs, mboxes without --notify).

Queueing is cheap (it runs inside the transaction of the change, e.g. while a mail is ingested): one small
row per recipient with its Message-ID and signed reply token fixed now, the rate-cap decision taken now, and
the values that must describe the event as it happened (`OutboxMail.params`). Rendering the templates and
building the bytes happens in the delivery round (gateway.outbound.build, on the row's first claim).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from gateway import ourmail
from gateway.config import Config
from gateway.db import drop_memo, is_unavailable, write_locked_memo
from gateway.events import CommandsDone, CommentAdded, Event, MailIgnored, MailRejected, TicketChanged, TicketCreated
from gateway.guard import relay
from gateway.models import Contact, InboundMail, OutboxMail, Ticket, TicketMessageId, table_of
from gateway.outbound import ratelimit
from gateway.outbound.audience import Audience, Recipient
from gateway.outbound.caps import SendCaps
from gateway.outbound.render import Templates, fmt_time
from gateway.tickets import message_ids_written

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.host import AppHost
    from gateway.outbound.dkimsign import Signer

log = logging.getLogger("gateway.outbound")


class Outbound:
    """Listener registered in app.listeners by gateway.outbound.install."""

    def __init__(self, config: Config, clock: Clock, templates: Templates, secret: bytes) -> None:
        self.config = config
        self.clock = clock
        self.templates = templates
        self.secret = secret
        ob, n = config.outbound, config.notifications
        self.n = n
        self.bases = config.gateway_addresses
        self.from_addr = (ob["from_address"] or self.bases[0]).lower()
        self.from_name = ob["from_name"]
        base = self.from_addr
        if not config.is_gateway_address(base):
            base = self.bases[0]
        self.reply_base = base  # replies go to <local>+<token>@<domain> of a gateway address
        self.domain = ourmail.our_domain(config)
        self.tag_prefix = config.gateway["subject_tag_prefix"]
        st = config.values["staff"]
        self.note_sub: str = st["note_subaddress"]
        self.audience = Audience(config)  # who may get what (gateway.outbound.audience)
        self.caps = SendCaps(ratelimit.Caps(n["max_per_ticket_10min"], n["max_per_recipient_day"]),
                             int(st["max_notices_per_ticket_hour"]))  # gateway.outbound.caps
        self.unsubscribe_url = ob["unsubscribe_url"].rstrip("/")
        self._dkim: list[Signer | None] = []  # loaded on first use (gateway.outbound.dkimsign)

    def dkim(self) -> Signer | None:
        """The DKIM signer when outbound.dkim_key_file is set (DkimError when the key is unusable)."""
        if not self._dkim:
            from gateway.outbound.dkimsign import signer_of

            self._dkim.append(signer_of(self.config))
        return self._dkim[0]

    # Entry point ---------------------------------------------------------------------------------------
    def __call__(self, session: Session, event: Event) -> None:
        if not self.relevant(event):
            return  # no savepoint, no round trip for events that can never send anything
        try:
            if isinstance(event, MailIgnored):  # changes ORM objects (the outbox row, the contact)
                with session.begin_nested():
                    self.dispatch(session, event)
            else:
                # only plain INSERTs (the outbox rows, their Message-IDs): a savepoint on the connection is
                # enough, and cheaper than the session's (what is pending is written first, outside it)
                session.flush()
                with session.connection().begin_nested():
                    self.dispatch(session, event)
        except Exception as e:  # noqa: BLE001 -- a notification must never cost the mail its ticket
            drop_memo(session, "sent-per-recipient")  # it may count rows that were rolled back
            if is_unavailable(e):
                raise
            log.exception("outbound: could not queue notifications for %s", type(event).__name__)

    def prefetch(self, session: Session, emails: list[str]) -> None:
        """For the next mails of a batch import (gateway.prefetch): the rate-cap counts of their senders, the
        recipients of their first notifications, in one query (kept where gateway.db.write_locked_memo can)."""
        notifies = self.n["ticket_created"] or self.n["comment"]
        if notifies and write_locked_memo(session, "sent-per-recipient") is not None:
            self.caps.sent_today(session, sorted({e.lower() for e in emails}), self.clock())

    def relevant(self, event: Event) -> bool:
        """False when `dispatch` would certainly do nothing for this event (cheap, no queries)."""
        if event.quiet:  # an import of old mail (`ingest` without --notify): nothing is mailed, and an old
            return False  # bounce marks nobody undeliverable today
        n = self.n
        if isinstance(event, TicketCreated):
            return bool(n["ticket_created"] or n["staff_new_ticket"])
        if isinstance(event, CommentAdded):
            return event.comment.source != "system" and bool(n["internal_note"] if event.comment.internal
                                                               else n["comment"])
        if isinstance(event, TicketChanged):
            ch = event.changes
            return bool(("status" in ch and n["status"] and ch["status"][1] in ("resolved", "closed", "pending"))
                        or ("assignee" in ch and n["assignment"] and event.ticket.assignee is not None))
        if isinstance(event, MailRejected):
            return bool(n["rejected"] and event.sender)
        if isinstance(event, MailIgnored):
            return event.kind == "bounce"
        if isinstance(event, CommandsDone):
            return bool(n["commands"])
        return False

    def dispatch(self, session: Session, event: Event) -> None:
        if isinstance(event, TicketCreated):
            self._ticket_created(session, event)
        elif isinstance(event, CommentAdded):
            self._comment(session, event)
        elif isinstance(event, TicketChanged):
            self._changed(session, event)
        elif isinstance(event, MailRejected):
            self._rejected(session, event)
        elif isinstance(event, MailIgnored):
            self._ignored(session, event)
        elif isinstance(event, CommandsDone):
            self._commands(session, event)

    # Helpers -------------------------------------------------------------------------------------------
    def tag(self, ticket: Ticket) -> str:
        return f"[{self.tag_prefix}{ticket.number}]"

    def gateway_ctx(self) -> dict[str, str]:
        return {"from_name": self.from_name, "address": self.from_addr}

    def ticket_ctx(self, ticket: Ticket) -> dict[str, Any]:
        """The template variable `ticket` (delivery time: gateway.outbound.build)."""
        from markupsafe import Markup

        rep = self.reporter_of(ticket)
        return {"number": ticket.number, "tag": self.tag(ticket), "subject": ticket.subject,
                "status": ticket.status, "priority": ticket.priority, "type": ticket.type,
                "group": ticket.group or "", "reporter_name": rep.name if rep else "",
                "reporter_email": rep.email if rep else "", "description": ticket.description or "",
                "description_html": Markup(_sanitize(ticket.description_html)),
                "created_at": fmt_time(ticket.created_at)}

    def reporter_of(self, ticket: Ticket) -> Recipient | None:
        return self.audience.reporter_of(ticket)

    def usable(self, r: Recipient | None) -> bool:
        return self.audience.usable(r)

    # Events --------------------------------------------------------------------------------------------
    def _ticket_created(self, s: Session, ev: TicketCreated) -> None:
        t = ev.ticket
        by_mail = ev.mail_id is not None
        rounds = 0  # notification rounds of this ticket so far: it is new, there are only the ones made here
        if self.n["ticket_created"] and not ev.auto:
            rep = self.reporter_of(t)
            if rep is not None and self.usable(rep):
                # the people Cc'd on the new ticket get the acknowledgement too (visible in Cc), where the
                # gateway may mail them (gateway.guard.relay)
                cc = [Recipient(w.contact.email, w.contact.name or "", w.contact) for w in t.watchers
                      if relay.mailable(w)]
                rs = [r for r in self.audience.unique([rep, *cc], set()) if self.usable(r)]
                rows = self.enqueue(s, "ticket_created", t, rs, by_mail=by_mail, auto_submitted="auto-replied",
                                    bulk=True, mail_id=ev.mail_id, ticket_rounds=rounds)
                rounds += any(r["status"] != "suppressed" for r in rows)
        if self.n["staff_new_ticket"]:
            staff = [Recipient(c.email, c.name or "", c) for c in self.audience.staff(s)]
            rep = self.reporter_of(t)
            exclude = {rep.email} if rep else set()
            staff = [r for r in self.audience.unique(staff, exclude) if self.usable(r)]
            if staff:
                self.enqueue(s, "staff_new_ticket", t, staff, by_mail=by_mail, mail_id=ev.mail_id, visible=False,
                             staff=True)

    def _comment(self, s: Session, ev: CommentAdded) -> None:
        t, c = ev.ticket, ev.comment
        if c.source == "system":
            return
        author = {e for e in (c.author_email, c.author.email if c.author else None) if e}
        watchers = [Recipient(w.contact.email, w.contact.name or "", w.contact) for w in t.watchers
                    if relay.mailable(w)]
        assignee = Recipient(t.assignee.email, t.assignee.name or "", t.assignee) if t.assignee else None
        if c.internal:
            if not self.n["internal_note"]:
                return
            rs = [r for r in self.audience.unique([assignee, *watchers], author) if r.is_staff and self.usable(r)]
            if rs:
                self.enqueue(s, "internal_note", t, rs, by_mail=ev.mail_id is not None,
                             comment_id=c.id, mail_id=ev.mail_id, visible=False, staff=True)
            return
        if not self.n["comment"]:
            return
        # not again to those who had the mail itself (its To and Cc)
        everyone = [self.reporter_of(t), *watchers, assignee]
        if not c.by_staff:  # a customer spoke: the staff that the rules name hear of it
            everyone += self.audience.staff_for(s, t)
        rs = [r for r in self.audience.unique(everyone, author | set(ev.seen_by)) if self.usable(r)]
        customers = [r for r in rs if not r.is_staff]
        staff = [r for r in rs if r.is_staff]
        if customers:
            self.enqueue(s, "comment", t, customers, by_mail=ev.mail_id is not None, comment_id=c.id,
                         mail_id=ev.mail_id)
        if staff:
            self.enqueue(s, "comment", t, staff, by_mail=ev.mail_id is not None, comment_id=c.id,
                         mail_id=ev.mail_id, staff=True)

    def _commands(self, s: Session, ev: CommandsDone) -> None:
        r = Recipient(ev.by.email, ev.by.name or "", ev.by)
        if not self.usable(r):
            return
        self.enqueue(s, "commands", ev.ticket, [r], by_mail=ev.mail_id is not None, mail_id=ev.mail_id,
                     visible=False, staff=True, auto_submitted="auto-replied",
                     extra={"done": list(ev.done), "refused": [{"line": line, "reason": why}
                                                               for line, why in ev.refused]})

    def _changed(self, s: Session, ev: TicketChanged) -> None:
        t = ev.ticket
        by = {ev.by.email} if ev.by is not None else set()
        changed_by = (ev.by.name or ev.by.email) if ev.by is not None else ""
        if "status" in ev.changes and self.n["status"]:
            old, new = ev.changes["status"]
            if new in ("resolved", "closed", "pending"):
                watchers = [Recipient(w.contact.email, w.contact.name or "", w.contact) for w in t.watchers
                            if relay.mailable(w)]
                rs = [r for r in self.audience.unique([self.reporter_of(t), *watchers], by) if self.usable(r)]
                if rs:
                    self.enqueue(s, "status", t, rs, by_mail=False, changed_by=changed_by,
                                 changes=[{"field": "status", "old": old, "new": new}])
        if "assignee" in ev.changes and self.n["assignment"] and t.assignee is not None:
            old, new = ev.changes["assignee"]
            r = Recipient(t.assignee.email, t.assignee.name or "", t.assignee)
            if r.email not in by and self.usable(r):
                self.enqueue(s, "assignment", t, [r], by_mail=False, changed_by=changed_by, visible=False,
                             changes=[{"field": "assignee", "old": old or "", "new": new or ""}], staff=True)

    def _rejected(self, s: Session, ev: MailRejected) -> None:
        if not self.n["rejected"] or not ev.sender:
            return
        r = Recipient(ev.sender.lower())
        if not self.usable(r):
            return
        now = self.clock()
        sent = s.scalar(select(func.count(OutboxMail.id)).where(
            OutboxMail.event == "rejected", OutboxMail.recipient == r.email, OutboxMail.status != "suppressed",
            OutboxMail.created_at >= now - ratelimit.REJECT_NOTICE_WINDOW)) or 0
        if not ratelimit.reject_notice_allowed(sent):
            return
        mail = s.get(InboundMail, ev.mail_id)
        subject = (mail.subject if mail else "") or ""
        self.enqueue(s, "rejected", None, [r], by_mail=True, original_subject=subject, mail_id=ev.mail_id,
                     auto_submitted="auto-replied", bulk=True)

    def _ignored(self, s: Session, ev: MailIgnored) -> None:
        if ev.kind != "bounce":
            return
        d = ev.details or {}
        mail = s.get(InboundMail, ev.mail_id)
        addrs = list(d.get("original_to") or []) + list((mail.envelope_to if mail else None) or [])
        row = None
        for a in addrs:
            tok = ourmail.token_of_address(a, self.bases)
            if tok:
                row = s.scalar(select(OutboxMail).where(OutboxMail.token == tok).order_by(OutboxMail.id.desc())
                               .limit(1))
                if row is not None:
                    break
        failed = {x.lower() for x in d.get("recipients") or []}
        if row is None and d.get("original_message_id"):
            cand = s.scalar(select(OutboxMail).where(OutboxMail.message_id == d["original_message_id"]))
            if cand is not None and cand.recipient in failed:
                row = cand
        if row is None:
            return
        permanent = d.get("permanent")
        what = f"{'hard' if permanent else 'soft' if permanent is False else 'unclassified'} bounce" + (
            f" {d['status']}" if d.get("status") else "") + f" (inbound mail {ev.mail_id})"
        row.last_error = (f"{row.last_error}; " if row.last_error else "") + what
        if permanent:
            contact = s.scalar(select(Contact).where(Contact.email == row.recipient))
            if contact is not None and not contact.undeliverable:
                contact.undeliverable = True
                contact.undeliverable_reason = f"{what} on {fmt_time(self.clock())}"
                log.info("outbound: %s marked undeliverable after a %s", row.recipient, what)
        s.flush()

    # Writing the outbox ---------------------------------------------------------------------------------
    def enqueue(self, s: Session, event: str, ticket: Ticket | None, recipients: list[Recipient], *,
                by_mail: bool, comment_id: int | None = None, changes: list[dict[str, Any]] | None = None,
                changed_by: str = "", original_subject: str = "", mail_id: int | None = None,
                auto_submitted: str = "auto-generated", bulk: bool = False, visible: bool = True,
                extra: dict[str, Any] | None = None, ticket_rounds: int | None = None,
                staff: bool = False) -> list[dict[str, Any]]:
        """Queue one row per recipient (rate caps decided now); returns the rows' values. Nothing is
        rendered here: see gateway.outbound.build. `ticket_rounds`: the ticket's notification rounds in the
        rate-cap window when the caller knows them (a ticket created in this transaction), else counted.
        staff: a round to staff only -- never counted against or held back by the loop caps for customers
        (not `caused_by_mail`), bounded by staff.max_notices_per_ticket_hour instead."""
        now = self.clock()
        suppressed: dict[str, str] = {}
        if staff:
            suppressed = self.caps.for_staff(s, ticket, [r.email for r in recipients], now)
            by_mail = False
        elif by_mail:
            suppressed = self.caps.for_mail(s, ticket, [r.email for r in recipients], now, ticket_rounds)
        rows, ids = self.plan(event, ticket, recipients, now=now, by_mail=by_mail, suppressed=suppressed,
                              comment_id=comment_id, changes=changes, changed_by=changed_by,
                              original_subject=original_subject, mail_id=mail_id, auto_submitted=auto_submitted,
                              bulk=bulk, visible=visible, extra=extra)
        self.write(s, rows, ids)
        if by_mail:
            self.caps.count_written(s, rows)
        return rows

    def plan(self, event: str, ticket: Ticket | None, recipients: list[Recipient], *, now: datetime,
             by_mail: bool = False, suppressed: dict[str, str] | None = None, comment_id: int | None = None,
             changes: list[dict[str, Any]] | None = None, changed_by: str = "", original_subject: str = "",
             mail_id: int | None = None, auto_submitted: str = "auto-generated", bulk: bool = False,
             visible: bool = True, extra: dict[str, Any] | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The outbox rows (and the ticket_message_ids rows) of one notification round, as plain values:
        pure apart from the clock-free token/Message-ID generation; `write` inserts them."""
        suppressed = suppressed or {}
        batch = uuid.uuid4().hex
        common: dict[str, Any] = {}
        if ticket is not None:  # the ticket as the event saw it (the mail may be built a little later)
            common["ticket"] = {"status": ticket.status, "priority": ticket.priority, "type": ticket.type,
                                "group": ticket.group or ""}
            if visible and self.n["cc_watchers"]:
                common["cc"] = True
        if mail_id is not None:
            common["mail_id"] = mail_id
        if auto_submitted != "auto-generated":
            common["auto"] = auto_submitted
        if bulk:
            common["bulk"] = True
        if changes:
            common["changes"] = changes
        if changed_by:
            common["changed_by"] = changed_by
        if original_subject:
            common["original_subject"] = original_subject
        if extra:
            common["extra"] = extra
        rows: list[dict[str, Any]] = []
        ids: list[dict[str, Any]] = []
        for r in recipients:
            tok = (ourmail.make_token(self.secret, ticket_id=ticket.id, ticket_number=ticket.number,
                                     recipient=r.email) if ticket is not None else None)
            reply = ourmail.token_address(self.reply_base, tok) if tok else None
            mid = ourmail.new_message_id(self.domain, ticket.number if ticket is not None else None)
            why = suppressed.get(r.email)
            params = {**common, "name": r.name, "staff": r.is_staff}
            if r.is_staff and ticket is not None and self.note_sub:  # where a staff member writes a note
                params["note"] = ourmail.token_address(self.reply_base, ourmail.make_token(
                    self.secret, ticket_id=ticket.id, ticket_number=ticket.number, recipient=r.email, note=True))
            rows.append(dict(
                created_at=now, ticket_id=ticket.id if ticket is not None else None, comment_id=comment_id,
                event=event, batch=batch, caused_by_mail=by_mail, recipient=r.email,
                contact_id=r.contact.id if r.contact is not None else None, token=tok,
                envelope_from=reply or self.from_addr, message_id=mid, subject="",
                params=params, raw=None,
                status="suppressed" if why else "queued", attempts=0, next_attempt_at=None if why else now,
                last_error=why, claim_token=None, claimed_until=None, sent_at=None))
            if ticket is not None and not why:
                ids.append(dict(message_id=mid, ticket_id=ticket.id, direction="out", created_at=now))
        return rows, ids

    @staticmethod
    def write(s: Session, rows: list[dict[str, Any]], ids: list[dict[str, Any]]) -> None:
        """Insert planned rows: one multi-row statement per table, in the caller's transaction."""
        if rows:
            s.connection().execute(_INSERT_OUTBOX, rows)
        if ids:
            s.connection().execute(_INSERT_MESSAGE_IDS, ids)
            message_ids_written(s, (r["message_id"] for r in ids))

_INSERT_OUTBOX = insert(table_of(OutboxMail))
_INSERT_MESSAGE_IDS = insert(table_of(TicketMessageId))
def _sanitize(html: str | None) -> str:
    if not html:
        return ""
    from gateway.quotes import sanitize_html

    return sanitize_html(html)


def _empty_ticket() -> dict[str, Any]:
    from markupsafe import Markup

    return {"number": 0, "tag": "", "subject": "", "status": "", "priority": "", "type": "", "group": "",
            "reporter_name": "", "reporter_email": "", "description": "", "description_html": Markup(""),
            "created_at": ""}


def notifier_of(app: AppHost) -> Outbound | None:
    """The App's Outbound listener (None when outbound mail is disabled)."""
    for listener in app.listeners:
        if isinstance(listener, Outbound):
            return listener
    return None
