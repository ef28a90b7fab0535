"""Create the ticket or add the comment; Cc'd addresses (not the gateway's own) become watchers."""

from __future__ import annotations

from gateway.pipeline import MailContext


def _watchers(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None and ctx.ticket is not None
    added = []
    for name, addr in p.cc:
        if not addr or addr.count("@") != 1 or ctx.config.is_gateway_address(addr) or addr == ctx.sender_email:
            continue
        contact = ctx.directory.contact(addr) or ctx.directory.register(addr, name=name, auto_registered=True)
        if ctx.tickets.add_watcher(ctx.ticket, contact):
            added.append(addr)
    if added:
        ctx.note(f"thread: watchers added from Cc: {', '.join(added)}")


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None and ctx.reporter is not None
    if ctx.ticket is None:
        route = ctx.routing
        ctx.ticket = ctx.tickets.create(
            subject=p.subject, reporter=ctx.reporter, sender_email=ctx.sender_email, description=ctx.body,
            description_full=ctx.full_text, description_html=ctx.html, priority=route.get("priority", "medium"),
            type=route.get("type", "incident"), group=route.get("group"), source_mail=ctx.mail,
            message_ids=[p.message_id] if p.message_id else [])
        ctx.created = True
        ctx.note(f"thread: opened ticket #{ctx.ticket.number}")
        if ctx.related is not None:
            ctx.tickets.link(ctx.ticket, ctx.related, kind=ctx.related_kind, reason=ctx.related_reason)
            ctx.note(f"thread: linked #{ctx.ticket.number} to #{ctx.related.number} ({ctx.related_kind})")
    else:
        ticket = ctx.ticket
        staff = bool(ctx.sender and ctx.sender.is_staff)
        internal = staff and ctx.config.gateway["staff_comments_internal"]
        ctx.comment = ctx.tickets.add_comment(ticket, author=ctx.sender or ctx.reporter,
                                              author_email=ctx.sender_email, body=ctx.body,
                                              full_text=ctx.full_text, html=ctx.html, internal=internal,
                                              mail=ctx.mail)
        ctx.tickets.remember_message_id(ticket, p.message_id, "in")
        ctx.note(f"thread: {'staff' if staff else 'customer'} {'internal note' if internal else 'comment'} "
                 f"on #{ticket.number}")
        if ticket.status in ("closed", "resolved") or (ticket.status == "pending" and not staff):
            old = ticket.status
            ctx.tickets.change(ticket, by=ctx.sender, status="open")
            ctx.note(f"thread: #{ticket.number} {old} -> open (reply from {'staff' if staff else 'customer'})")
    _watchers(ctx)
