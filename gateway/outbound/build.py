"""Rendering and building queued outbox rows: the expensive half of a notification, run by the delivery round
(gateway.outbound.sender.deliver_due) on a row's first claim, never in the transaction that queued it.

What the row fixed at enqueue is used as is: the recipient, the Message-ID, the reply token (Reply-To and
envelope sender), the Date (the row's created_at, i.e. the event's time) and the values in `params` (the
ticket's status/priority/type/group as the event saw them, old/new values, the trigger mail, SLA figures,
the recipient's name). What cannot change afterwards is read now: the ticket's subject and description, the
comment, the thread (inbound Message-IDs known when the row was queued, this recipient's previous copy),
the watchers shown in Cc (those watching when the row was queued).

A row that cannot be built (a template error, the ticket gone) raises BuildError; the sender marks that row
failed with the reason and goes on with the others.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from gateway import ourmail
from gateway.guard import relay
from gateway.models import Attachment, Comment, InboundMail, OutboxMail, Ticket, TicketMessageId
from gateway.outbound import compose, ratelimit
from gateway.outbound.dkimsign import DkimError
from gateway.outbound.render import Rendered, context, describe_error, fmt_time

if TYPE_CHECKING:
    from gateway.outbound.notify import Outbound


# A comment's files go with its notification up to this many bytes in all; the rest are named in the text.
ATTACHMENTS_MAX_BYTES = 20 * 1024 * 1024


# Template variables fixed by what the render key names already (the event, the ticket and comment, the values
# frozen at enqueue in `params`, the gateway's From): the same for every copy of one notification.
SHARED_VARIABLES = frozenset({"event", "ticket", "comment", "gateway", "changes", "changed_by", "original_subject"})


def _frozen(v: Any) -> Any:
    """A hashable stand-in for a template value (dicts and lists of plain values)."""
    if isinstance(v, dict):
        return tuple(sorted((str(k), _frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


class BuildError(Exception):
    """This row cannot be built; the message says why (shown by `outbox list`)."""


@dataclass
class Shared:
    """What the copies of one notification share, kept for one delivery round: the rendered templates (one
    rendering per notification when its templates use nothing personal, see Templates.personal) and the
    MIME content built from them (compose.Content: the parts, encoded once)."""

    renders: dict[tuple[Any, ...], Rendered] = field(default_factory=dict)
    contents: dict[tuple[Any, ...], compose.Content] = field(default_factory=dict)
    # what `Builder.prepare` loaded, for the round's later chunks (the objects' loaded attributes are read)
    tickets: dict[int, Ticket | None] = field(default_factory=dict)
    tctx: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    inbound: dict[int, list[tuple[str, datetime]]] = field(default_factory=dict)
    triggers: dict[int, str | None] = field(default_factory=dict)
    cc: dict[tuple[int, datetime], tuple[list[tuple[str, str]], list[tuple[str, str]], set[str]]] = field(
        default_factory=dict)
    watchers: dict[int, frozenset[str]] = field(default_factory=dict)  # ticket id -> its watchers but its reporter
    # the round's claimed ids (lowest, highest): the threading history is then loaded once per ticket and round,
    # not per chunk; (ticket, recipient) -> [(outbox id, message id)], see Builder._load_history
    span: tuple[int, int] | None = None
    history: dict[tuple[int, str], list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    history_tickets: set[int] = field(default_factory=set)
    # (ticket id, enqueue time) -> (the inbound Message-IDs then, their References chain)
    threads: dict[tuple[int, datetime], tuple[list[str], list[str]]] = field(default_factory=dict)


class Builder:
    """Builds claimed rows with caches shared by the rows of one delivery round (one ticket's 200 copies
    load the ticket, its thread and its watchers once, and are rendered and encoded once where the templates
    allow: only the headers are each copy's own)."""

    def __init__(self, ob: Outbound, session: Session, shared: Shared | None = None) -> None:
        self.ob = ob
        self.s = session
        self.shared = shared = shared or Shared()
        self.tickets = shared.tickets
        self.tctx = shared.tctx
        self.comments = shared.comments
        self.inbound = shared.inbound
        self.triggers = shared.triggers
        self.cc = shared.cc
        # (ticket, recipient) -> [(outbox id, message id)] of its non-suppressed copies (for In-Reply-To)
        self.history = shared.history

    # Loading, a chunk of rows at a time -------------------------------------------------------------------
    def prepare(self, rows: Iterable[OutboxMail]) -> None:
        rows = list(rows)
        s = self.s
        tids = sorted({r.ticket_id for r in rows if r.ticket_id is not None} - set(self.tickets))
        if tids:
            for t in s.scalars(select(Ticket).where(Ticket.id.in_(tids))):
                self.tickets[t.id] = t
            for tid in tids:
                self.tickets.setdefault(tid, None)
                self.inbound.setdefault(tid, [])
            for tid, mid, at in s.execute(
                    select(TicketMessageId.ticket_id, TicketMessageId.message_id, TicketMessageId.created_at)
                    .where(TicketMessageId.ticket_id.in_(tids), TicketMessageId.direction == "in")
                    .order_by(TicketMessageId.id)):
                self.inbound[tid].append((mid, at))
        cids = sorted({r.comment_id for r in rows if r.comment_id is not None} - set(self.comments))
        if cids:
            for c in s.scalars(select(Comment).where(Comment.id.in_(cids))):
                self.comments[c.id] = self.comment_ctx(c)
            for cid in cids:
                self.comments.setdefault(cid, None)
            for a in s.scalars(select(Attachment).where(Attachment.comment_id.in_(cids), Attachment.inline.is_(False))
                               .order_by(Attachment.id)):
                ctx = self.comments.get(a.comment_id or 0)
                if ctx is not None:
                    ctx.setdefault("files", []).append((a.filename, a.content_type, a.sha256, a.size))
        mids = sorted({m for r in rows if (m := (r.params or {}).get("mail_id")) is not None} - set(self.triggers))
        if mids:
            for mail_id, message_id in s.execute(select(InboundMail.id, InboundMail.message_id)
                                                 .where(InboundMail.id.in_(mids))):
                self.triggers[mail_id] = message_id.strip().strip("<>") if message_id else None
            for m in mids:
                self.triggers.setdefault(m, None)
        self._load_history([r for r in rows if r.ticket_id is not None])

    def _load_history(self, rows: list[OutboxMail]) -> None:
        """Each recipient's previous non-suppressed copy on the ticket, as of each row's enqueue: the latest
        below the first id per (ticket, recipient), plus every copy from the first id to the last. With the
        round's span (Shared.span) once per ticket and round, for every recipient; else for the chunk's rows."""
        if not rows:
            return
        span = self.shared.span
        if span is None:
            self.history.clear()
            tids = sorted({r.ticket_id for r in rows if r.ticket_id is not None})
            rcpts = sorted({r.recipient for r in rows})
            first, last = min(r.id for r in rows), max(r.id for r in rows)
            base = and_(OutboxMail.ticket_id.in_(tids), OutboxMail.recipient.in_(rcpts),
                        OutboxMail.status != "suppressed")
        else:
            tids = sorted({r.ticket_id for r in rows if r.ticket_id is not None} - self.shared.history_tickets)
            if not tids:
                return
            self.shared.history_tickets.update(tids)
            first, last = span
            base = and_(OutboxMail.ticket_id.in_(tids), OutboxMail.status != "suppressed")
        below = select(func.max(OutboxMail.id)).where(base, OutboxMail.id < first).group_by(
            OutboxMail.ticket_id, OutboxMail.recipient)
        for oid, tid, rcpt, mid in self.s.execute(
                select(OutboxMail.id, OutboxMail.ticket_id, OutboxMail.recipient, OutboxMail.message_id)
                .where(base, or_(OutboxMail.id.in_(below), and_(OutboxMail.id >= first, OutboxMail.id <= last)))
                .order_by(OutboxMail.id)):
            if tid is not None:
                self.history[(tid, rcpt)].append((oid, mid))

    def comment_ctx(self, c: Comment) -> dict[str, Any]:
        from markupsafe import Markup

        from gateway.outbound.notify import _sanitize

        return {"body": c.body or "", "html": Markup(_sanitize(c.html)),
                "author_name": (c.author.name if c.author else "") or "",
                "author_email": c.author_email or (c.author.email if c.author else "") or "",
                "internal": c.internal, "created_at": fmt_time(c.created_at)}

    def ticket_ctx(self, t: Ticket) -> dict[str, Any]:
        ctx = self.tctx.get(t.id)
        if ctx is None:
            ctx = self.tctx[t.id] = self.ob.ticket_ctx(t)
        return ctx

    def visible(self, t: Ticket, at: datetime) -> tuple[list[tuple[str, str]], list[tuple[str, str]], set[str]]:
        """To (the reporter) and Cc (the watchers when the row was queued, not in To) shown on every copy, and
        every address shown: worked out once per notification, not per copy."""
        key = (t.id, at)
        hit = self.cc.get(key)
        if hit is None:
            ob = self.ob
            to_vis: list[tuple[str, str]] = []
            rep = ob.reporter_of(t)
            if rep is not None and ob.usable(rep):
                to_vis.append((rep.name, rep.email))
            cc_vis = [(w.contact.name or "", w.contact.email) for w in sorted(t.watchers, key=lambda w: w.id)
                      if (w.created_at is None or w.created_at <= at) and relay.mailable(w)
                      and not ob.config.is_gateway_address(w.contact.email)
                      and ratelimit.is_sendable_address(w.contact.email)]
            shown = {x[1] for x in to_vis}
            cc_vis = [c for c in cc_vis if c[1] not in shown]
            hit = self.cc[key] = (to_vis, cc_vis, shown | {c[1] for c in cc_vis})
        return hit

    # Building one row -------------------------------------------------------------------------------------
    def build(self, row: OutboxMail) -> tuple[bytes, str]:
        """(raw bytes, subject) of a claimed row; raises BuildError."""
        ob = self.ob
        p = dict(row.params or {})
        ticket, comment = self._subjects(row, p)
        if ticket is not None:
            tctx = {**self.ticket_ctx(ticket), **(p.get("ticket") or {})}
        else:
            from gateway.outbound.notify import _empty_ticket

            tctx = _empty_ticket()
        reply = row.envelope_from if row.token else None
        note = p.get("note")
        if note and row.event == "internal_note":
            reply = note  # a reply to a note stays a note
        ctx = context(event=row.event, ticket=tctx,
                      recipient={"name": personal_name(p.get("name") or ""), "email": row.recipient,
                                 "is_staff": bool(p.get("staff"))},
                      gateway=ob.gateway_ctx(), reply_address=reply or ob.from_addr, comment=comment,
                      changes=p.get("changes") or [], changed_by=p.get("changed_by") or "",
                      original_subject=p.get("original_subject") or "")
        if note:
            ctx["note_address"] = note
            ctx["reply_hint"] = (f"Reply to this mail to add an internal note (staff only) to ticket {tctx['tag']}."
                                 if row.event == "internal_note" else
                                 f"{ctx['reply_hint']} For an internal note (staff only), write to {note}.")
        if p.get("extra"):
            ctx.update(p["extra"])
        out = self._render(row, p, ctx)
        subject = out.subject
        if ticket is not None and ob.tag(ticket).lower() not in subject.lower():
            subject = f"{ob.tag(ticket)} {subject}"
        to, cc = self._recipients(row, ticket, p)
        irt, refs = self._thread(row, ticket, p)
        when = row.created_at
        unsubscribe = self._unsubscribe(row, ticket)
        try:
            content = self._content(row, comment, out)
            raw = compose.build(compose.Outgoing(
                from_name=ob.from_name, from_addr=ob.from_addr, to=to, cc=cc, subject=subject,
                text=out.text, html=out.html, message_id=row.message_id, date=when, reply_to=reply,
                in_reply_to=irt, references=refs, auto_submitted=p.get("auto") or "auto-generated",
                precedence_bulk=bool(p.get("bulk")), loop_value=ob.domain,
                thread_topic=ticket.subject if ticket is not None else None,
                thread_index=(compose.thread_index(ticket.created_at, f"{ob.domain}/{ticket.id}", when)
                              if ticket is not None else None),
                list_unsubscribe=unsubscribe, one_click=bool(ob.unsubscribe_url)), content=content)
            signer = ob.dkim()
            if signer is not None:
                raw = signer.sign(raw)
        except (ValueError, DkimError) as e:
            raise BuildError(f"cannot build the mail: {e}") from e
        if ticket is not None:  # later rows of this round to the same recipient thread under this copy
            hist = self.history[(ticket.id, row.recipient)]
            if not any(oid == row.id for oid, _ in hist):
                hist.append((row.id, row.message_id))
                hist.sort()
        return raw, subject

    def _render(self, row: OutboxMail, p: dict[str, Any], ctx: dict[str, Any]) -> Rendered:
        """The templates for this row, rendered once for every copy of a notification whose context is the
        same in what the templates read: the key holds the event, ticket, comment and frozen values, and the
        value of every other variable the templates read (the recipient, the reply and note addresses, the
        reply hint, ...); when the templates name another template at run time, every variable."""
        ob = self.ob
        used = ob.templates.variables(row.event)
        common = json.dumps({k: v for k, v in p.items() if k not in ("name", "staff")}, sort_keys=True, default=str)
        own = tuple((k, _frozen(v)) for k, v in sorted(ctx.items())
                    if k not in SHARED_VARIABLES and (used is None or k in used))
        key = (row.event, row.ticket_id, row.comment_id, common, own)
        hit = self.shared.renders.get(key)
        if hit is None:
            try:
                hit = self.shared.renders[key] = ob.templates.render(row.event, ctx)
            except Exception as e:  # noqa: BLE001 -- jinja2 raises many kinds
                raise BuildError(f"cannot render the mail: {describe_error(e, row.event)}") from e
        return hit

    def _content(self, row: OutboxMail, comment: dict[str, Any] | None, out: Rendered) -> compose.Content:
        """The MIME content (text, HTML, the comment's files), encoded once per distinct rendering."""
        key = (out.text, out.html, row.comment_id)
        hit = self.shared.contents.get(key)
        if hit is None:
            files, text = self._files(comment, out.text)
            hit = self.shared.contents[key] = compose.make_content(text, out.html, files)
        return hit

    def _unsubscribe(self, row: OutboxMail, ticket: Ticket | None) -> list[str]:
        """List-Unsubscribe for a copy to a watcher of the ticket (not its reporter): a signed mailto address
        (the inbound pipeline removes that watcher, handlers/unsubscribe.py) and, with
        outbound.unsubscribe_url, the RFC 8058 one-click URL of the HTTP API."""
        if ticket is None:
            return []
        ob = self.ob
        watching = self.shared.watchers.get(ticket.id)  # its watchers but its reporter, once per ticket and round
        if watching is None:
            rep = ob.reporter_of(ticket)
            watching = self.shared.watchers[ticket.id] = frozenset(
                w.contact.email.lower() for w in ticket.watchers) - ({rep.email} if rep is not None else set())
        if row.recipient not in watching:
            return []
        token = ourmail.make_unsubscribe_token(ob.secret, ticket_id=ticket.id, ticket_number=ticket.number,
                                               recipient=row.recipient)
        uris = [f"mailto:{ourmail.token_address(ob.reply_base, token)}?subject=unsubscribe"]
        if ob.unsubscribe_url:
            uris.append(f"{ob.unsubscribe_url}/api/v1/unsubscribe/{token}")
        return uris

    def _subjects(self, row: OutboxMail, p: dict[str, Any]) -> tuple[Ticket | None, dict[str, Any] | None]:
        """The row's ticket and comment (template context), loaded by `prepare`; BuildError when gone."""
        ticket: Ticket | None = None
        if row.ticket_id is not None:
            ticket = self.tickets.get(row.ticket_id)
        if ticket is None and ("ticket" in p or row.ticket_id is not None):
            raise BuildError("cannot build the mail: its ticket no longer exists")
        comment = None
        if row.comment_id is not None:
            comment = self.comments.get(row.comment_id)
            if comment is None:
                raise BuildError(f"cannot build the mail: comment {row.comment_id} no longer exists")
        return ticket, comment

    def _recipients(self, row: OutboxMail, ticket: Ticket | None, p: dict[str, Any]
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(To, Cc) shown on this copy: the reporter and the watchers when the row asks for them, and always
        the copy's own recipient."""
        name = p.get("name") or ""
        to: list[tuple[str, str]] = []
        cc: list[tuple[str, str]] = []
        shown: set[str] = set()
        if ticket is not None and p.get("cc"):
            to, cc, shown = self.visible(ticket, row.created_at)
        if not to:
            to, cc = [(name, row.recipient)], [c for c in cc if c[1] != row.recipient]
        elif row.recipient not in shown:
            to = [(name, row.recipient), *to]
        return to, cc

    def _thread(self, row: OutboxMail, ticket: Ticket | None, p: dict[str, Any]) -> tuple[str | None, list[str]]:
        """(In-Reply-To, References) as of the enqueue: the inbound thread then, this recipient's previous
        copy, the mail that triggered this one."""
        inbound: list[str] = []
        own: str | None = None
        chain: list[str] = []
        if ticket is not None:
            key = (ticket.id, row.created_at)
            hit = self.shared.threads.get(key)  # the inbound thread then: the same for every copy
            if hit is None:
                seen = [m for m, at in self.inbound.get(ticket.id, []) if at is None or at <= row.created_at]
                hit = self.shared.threads[key] = (seen, compose.references_chain(seen))
            inbound, chain = hit
            for oid, mid in self.history.get((ticket.id, row.recipient), []):
                if oid >= row.id:
                    break
                own = mid
        refs = list(chain)
        if own and own not in refs:
            refs.append(own)
        trigger = self.triggers.get(p["mail_id"]) if p.get("mail_id") is not None else None
        return trigger or own or (inbound[-1] if inbound else None), refs

    def _files(self, comment: dict[str, Any] | None, text: str) -> tuple[list[tuple[str, str, bytes]], str]:
        """The comment's (non-inline) attachments for its notification, within ATTACHMENTS_MAX_BYTES; the
        ones left out (too large, or missing from the store) are named at the end of the text."""
        if not comment or not comment.get("files"):
            return [], text
        from gateway.blobs import BlobStore

        store = BlobStore(self.ob.config.attachments_dir)
        out: list[tuple[str, str, bytes]] = []
        left: list[str] = []
        total = 0
        for name, ctype, sha, size in comment["files"]:
            if total + size > ATTACHMENTS_MAX_BYTES:
                left.append(name)
                continue
            try:
                data = store.get(sha)
            except OSError:
                left.append(name)
                continue
            total += len(data)
            out.append((name, ctype, data))
        if left:
            text = text.rstrip("\n") + "\n\n(Not attached here, see the ticket: " + ", ".join(left) + ")\n"
        return out, text


def personal_name(name: str) -> str:
    """The name to greet someone by: none when it is empty or an address (`"alice@x" <alice@x>`); the
    templates then greet neutrally ("Hello,"), never by address."""
    name = " ".join(name.split())
    return "" if not name or "@" in name else name
