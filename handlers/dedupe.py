"""The same mail again (same Message-ID from the same sender, or the same bytes) makes nothing new.

The winning mail holds unique claims on its sha256 and on hash(Message-ID, sender): two deliveries racing
each other cannot both win (the loser's transaction fails and is run again, and then sees the duplicate).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import or_, select

from gateway.models import InboundMail, Ticket
from gateway.outcomes import Duplicate
from gateway.pipeline import MailContext


def msgid_claim(message_id: str, sender: str) -> str:
    return hashlib.sha256(f"{message_id}\x00{sender}".encode("utf-8", "surrogatepass")).hexdigest()


def handle(ctx: MailContext) -> None:
    assert ctx.parsed is not None
    mail = ctx.mail
    sender = (ctx.parsed.from_addr or mail.envelope_from or "").lower()
    claim_msgid = msgid_claim(ctx.parsed.message_id, sender) if ctx.parsed.message_id else None
    conds = [InboundMail.claim_sha256 == mail.sha256]
    if claim_msgid:
        conds.append(InboundMail.claim_msgid == claim_msgid)
    first = ctx.session.execute(
        select(InboundMail.id, InboundMail.claim_sha256, InboundMail.outcome, InboundMail.ticket_id)
        .where(or_(*conds), InboundMail.id != mail.id).order_by(InboundMail.id).limit(1)).first()
    if first is not None:
        same = "the same bytes" if first.claim_sha256 == mail.sha256 else "the same Message-ID and sender"
        ctx.ticket = None
        where = ""
        if first.ticket_id is not None:
            ticket = ctx.session.get(Ticket, first.ticket_id)
            where = f" on ticket #{ticket.number}" if ticket is not None else ""
        raise Duplicate(f"duplicate of mail {first.id} ({same}), which was {first.outcome}{where}")
    mail.claim_sha256 = mail.sha256
    mail.claim_msgid = claim_msgid
    ctx.session.flush()  # a concurrent winner makes this fail: the intake runs the mail again
    ctx.note("dedupe: first time seen")
