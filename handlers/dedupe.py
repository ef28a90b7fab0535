"""The same mail again (same Message-ID from the same sender, or the same bytes) makes nothing new.

The winning mail holds unique claims on its sha256 and on hash(Message-ID, sender): two deliveries racing
each other cannot both win (the loser's transaction fails and is run again, and then sees the duplicate).
"""

from __future__ import annotations

from gateway.config import Config
from gateway.outcomes import Duplicate
from gateway.pipeline import MailContext
from gateway.store.base import Asks, Upcoming, msgid_claim_of


def asks(mail: Upcoming, config: Config) -> Asks:
    """Declared ahead: who holds this mail's two claims."""
    p = mail.parsed
    return Asks(claims=[(mail.sha256, msgid_claim_of(p.message_id, p.from_addr, mail.envelope_from))])


def handle(ctx: MailContext) -> None:
    assert ctx.parsed is not None
    mail = ctx.mail
    claim_msgid = msgid_claim_of(ctx.parsed.message_id, ctx.parsed.from_addr, mail.envelope_from)
    first = ctx.store.claim_holder(mail.sha256, claim_msgid, mail.id)
    if first is not None:
        same = "the same bytes" if first.claim_sha256 == mail.sha256 else "the same Message-ID and sender"
        ctx.ticket = None
        where = f" on ticket #{first.ticket_number}" if first.ticket_number is not None else ""
        raise Duplicate(f"duplicate of mail {first.mail_id} ({same}), which was {first.outcome}{where}")
    ctx.store.claim(mail, mail.sha256, claim_msgid)
    ctx.note("dedupe: first time seen")
