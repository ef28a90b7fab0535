"""Auto-replies, out-of-office, bounces, bulk and list mail: recorded as ignored, never a ticket or an answer.

A bounce whose original mail is known is attached to that ticket as an internal note.
"""

from __future__ import annotations

from gateway.autoreply import own_domains_of
from gateway.events import MailIgnored
from gateway.outcomes import Ignore
from gateway.pipeline import MailContext


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None
    own_domains = own_domains_of(ctx.config.gateway_addresses)
    verdict = ctx.ahead.classify(p.message, envelope_from=ctx.mail.envelope_from, from_addr=p.from_addr,
                                 own_domains=own_domains)
    if verdict is None:
        ctx.note("classify: written by a person")
        return
    ctx.verdict = verdict
    ctx.note(f"classify: {verdict.kind} ({verdict.reason})")
    details: dict[str, object] = {}
    ticket = None
    if verdict.kind == "bounce":
        info = ctx.ahead.bounce_info(p.message, envelope_from=ctx.mail.envelope_from, own_domains=own_domains)
        if info is not None:
            details = {"permanent": info.permanent, "recipients": list(info.recipients), "status": info.status,
                       "original_message_id": info.original_message_id, "original_to": list(info.original_to)}
            ids = [info.original_message_id] if info.original_message_id else []
            found = ctx.store.tickets_by_message_ids(ids)
            if found:
                ticket = found[0][1]
                ctx.ticket = ticket
                kind = 'permanent' if info.permanent else 'temporary' if info.permanent is False else 'unknown kind'
                summary = (f"Delivery failure ({kind}{', status ' + info.status if info.status else ''}) for "
                           f"{', '.join(info.recipients) or 'an unknown recipient'}.")
                ctx.comment = ctx.store.add_comment(ticket, author=None, author_email=None, body=summary,
                                                    full_text=p.text or summary, internal=True,
                                                    source="system", mail=ctx.mail)
                ctx.note(f"classify: bounce attached to ticket #{ticket.number} as an internal note")
    ctx.store.emit(MailIgnored(ctx.mail_id, verdict.kind, verdict.reason, ticket=ticket, details=details))
    raise Ignore(f"{verdict.kind}: {verdict.reason}")
