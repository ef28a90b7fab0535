"""Signed reply addresses and loops, before `match`.

* Our own mail coming back (our loop header, or a Message-ID minted by gateway.outbound on our domain) is
  ignored as a loop: never a ticket, never answered.
* A recipient `support+<number>-<mac>@...` (envelope, To or Cc) whose HMAC binds that ticket to the sender
  matches the ticket directly. A valid token used by someone else grants nothing: the sender is judged on
  their own by `match` (a stranger opens a ticket of their own, linked to the one named). A forged token
  matches nothing.
"""

from __future__ import annotations

from datetime import timedelta

from gateway import ourmail
from gateway.events import MailIgnored
from gateway.outcomes import Ignore
from gateway.pipeline import MailContext


def _loop(ctx: MailContext) -> str | None:
    p = ctx.parsed
    assert p is not None
    try:
        if p.message.get(ourmail.LOOP_HEADER) is not None:
            return f"{ourmail.LOOP_HEADER} header present"
    except Exception:  # noqa: BLE001 -- a malformed header: look at the Message-ID only
        pass
    if ourmail.is_our_message_id(p.message_id, ourmail.our_domain(ctx.config)):
        return f"our own Message-ID <{p.message_id}> came back"
    return None


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None
    why = _loop(ctx)
    if why:
        ctx.note(f"token: loop: {why}")
        ctx.store.emit(MailIgnored(ctx.mail_id, "loop", why))
        raise Ignore(f"loop: {why}")
    if ctx.ticket is not None:
        return
    bases = ctx.config.gateway_addresses
    addrs = list(ctx.mail.envelope_to or []) + [a for _, a in p.to] + [a for _, a in p.cc]
    seen: set[str] = set()
    for addr in addrs:
        tok = ourmail.token_of_address(addr, bases)
        if tok is None or tok in seen:
            continue
        seen.add(tok)
        parsed = ourmail.parse_token(tok)
        assert parsed is not None
        ticket = ctx.store.ticket(parsed.number)
        secret = ourmail.reply_secret(ctx.config)
        if ticket is None or not ctx.sender_email:
            ctx.note(f"token: {addr} names no ticket we know: ignored (forged)")
            continue
        if ourmail.verify(secret, tok, ticket_id=ticket.id, recipient=ctx.sender_email):
            ctx.note(f"token: {'note' if parsed.note else 'reply'} address {addr} signed for {ctx.sender_email} "
                     f"-> ticket #{ticket.number}")
            if parsed.note and ctx.sender is not None and ctx.sender.is_staff:
                ctx.internal = f"sent to the note address {addr}"
            if ticket.merged_into_id is not None:
                ticket = ctx.store.followed(ticket)
                ctx.note(f"token: #{parsed.number} was merged into #{ticket.number}")
            if ticket.status == "closed":
                closed = ticket.closed_at or ticket.updated_at
                days = ctx.config.gateway["reopen_days"]
                if ctx.clock() - closed > timedelta(days=days):
                    ctx.note(f"token: #{ticket.number} was closed {closed:%Y-%m-%d}, more than {days} days ago: "
                             "opening a follow-up ticket")
                    ctx.related, ctx.related_kind = ticket, "follow_up_of"
                    ctx.related_reason = f"reply to #{ticket.number}, closed on {closed:%Y-%m-%d}"
                    return
            ctx.ticket = ticket
            return
        if ctx.store.token_issued(tok):
            ctx.note(f"token: {addr} was issued to someone else, not to {ctx.sender_email}: it grants nothing "
                     "(the sender is judged on their own)")
        else:
            ctx.note(f"token: {addr} does not verify: forged, ignored")
