"""Create the ticket or add the comment; Cc'd addresses (not the gateway's own) become watchers, within
limits.max_watchers_per_mail (gateway.guard.relay says which of them the gateway may mail)."""

from __future__ import annotations

from datetime import datetime

from gateway.config import Config
from gateway.guard import relay
from gateway.pipeline import MailContext
from gateway.store.base import MAX_PER_MAIL, Asks, Upcoming
from gateway.tickets import MEMBER


def asks(mail: Upcoming, config: Config) -> Asks:
    """Declared ahead: the contacts of the Cc'd addresses (they become watchers), a bounded number."""
    return Asks(emails=[addr for _, addr in mail.parsed.cc if addr and addr.count("@") == 1][:MAX_PER_MAIL])


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None and ctx.reporter is not None
    relay.mark_sender(ctx)
    at = ctx.written_at()
    if ctx.historic:
        ctx.note(f"thread: imported, dated {at.isoformat() if at else 'now (no plausible Date)'}")
    if ctx.ticket is None:
        route = ctx.routing
        ctx.ticket = ctx.store.create_ticket(
            watchers=relay.cc_watchers(ctx), subject=p.subject, reporter=ctx.reporter, sender_email=ctx.sender_email,
            description=ctx.body, description_full=ctx.full_text, description_html=ctx.html,
            priority=route.get("priority", "medium"), type=route.get("type", "incident"), group=route.get("group"),
            source_mail=ctx.mail, at=at, message_ids=[p.message_id] if p.message_id else [])
        ctx.created = True
        ctx.note(f"thread: opened ticket #{ctx.ticket.number}")
        if ctx.related is not None:
            ctx.store.link(ctx.ticket, ctx.related, kind=ctx.related_kind, reason=ctx.related_reason)
            ctx.note(f"thread: linked #{ctx.ticket.number} to #{ctx.related.number} ({ctx.related_kind})")
        if ctx.internal:
            ctx.note(f"thread: a new ticket's first mail is its description, not an internal note ({ctx.internal})")
    else:
        _comment(ctx, at)
        _follow(ctx)
        relay.add_cc_watchers(ctx)


def _follow(ctx: MailContext) -> None:
    """A member of an organisation whose tickets its members share (visibility 'organisation') who writes to
    one of them follows it from then on: a watcher, mailed about what happens next."""
    ticket, sender = ctx.ticket, ctx.sender
    assert ticket is not None
    if sender is None or ctx.store.is_participant(ticket, sender, ctx.sender_email) != MEMBER:
        return
    if ctx.store.add_watcher(ticket, sender, vouched=relay.WROTE):
        ctx.note(f"thread: {sender.email} follows #{ticket.number} (a member of its organisation)")


def _comment(ctx: MailContext, at: datetime | None) -> None:
    p = ctx.parsed
    assert p is not None and ctx.ticket is not None
    ticket = ctx.ticket
    staff = bool(ctx.sender and ctx.sender.is_staff)
    ctx.store.remember_message_id(ticket, p.message_id)
    if ctx.commands is not None and not ctx.body.strip() and not p.attachments:
        ctx.note(f"thread: only commands: no comment on #{ticket.number}")
        return
    internal = staff and bool(ctx.internal or ctx.config.gateway["staff_comments_internal"])
    ctx.comment = ctx.store.add_comment(ticket, author=ctx.sender or ctx.reporter,
                                        author_email=ctx.sender_email, body=ctx.body,
                                        full_text=ctx.full_text, html=ctx.html, internal=internal,
                                        mail=ctx.mail, seen_by=[a for _, a in p.to + p.cc], at=at)
    why = ctx.internal or "gateway.staff_comments_internal (deprecated)"
    ctx.note(f"thread: {'staff' if staff else 'customer'} {f'internal note ({why})' if internal else 'comment'} "
             f"on #{ticket.number}")
    if internal:
        return  # a note among staff changes nothing for the customer
    sets_status = ctx.commands is not None and any(c.name in ("status", "pending") for c in ctx.commands.commands)
    if (ticket.status in ("closed", "resolved") and not sets_status) or (ticket.status == "pending" and not staff):
        old = ticket.status
        ctx.store.change(ticket, by=ctx.sender, status="open", at=at)
        ctx.note(f"thread: #{ticket.number} {old} -> open (reply from {'staff' if staff else 'customer'})")
