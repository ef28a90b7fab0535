"""The same mail again (same Message-ID from the same sender, or the same bytes) makes nothing new.

The winning mail holds unique claims on its sha256 and on hash(Message-ID, sender): two deliveries racing
each other cannot both win (the loser's transaction fails and is run again, and then sees the duplicate).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import bindparam, or_, select

from gateway.models import InboundMail, Ticket
from gateway.outcomes import Duplicate
from gateway.pipeline import MailContext


_COLUMNS = (InboundMail.id, InboundMail.claim_sha256, InboundMail.outcome, InboundMail.ticket_id)
# built once (a statement built per mail costs more than running it)
_FIRST_BY_BYTES = (select(*_COLUMNS)
                   .where(InboundMail.claim_sha256 == bindparam("sha"), InboundMail.id != bindparam("id"))
                   .order_by(InboundMail.id).limit(1))
_FIRST_BY_BYTES_OR_MSGID = (select(*_COLUMNS)
                            .where(or_(InboundMail.claim_sha256 == bindparam("sha"),
                                       InboundMail.claim_msgid == bindparam("msgid")),
                                   InboundMail.id != bindparam("id"))
                            .order_by(InboundMail.id).limit(1))


def msgid_claim(message_id: str, sender: str) -> str:
    return hashlib.sha256(f"{message_id}\x00{sender}".encode("utf-8", "surrogatepass")).hexdigest()


def handle(ctx: MailContext) -> None:
    assert ctx.parsed is not None
    mail = ctx.mail
    sender = (ctx.parsed.from_addr or mail.envelope_from or "").lower()
    claim_msgid = msgid_claim(ctx.parsed.message_id, sender) if ctx.parsed.message_id else None
    own = mail.id if mail.id is not None else 0  # 0: not written yet (a batch import), no row to skip
    # plain rows on the connection: no ORM objects, and no autoflush (a row not written yet gets its claims in
    # its INSERT, not in an UPDATE)
    conn = ctx.session.connection()
    if claim_msgid:
        first = conn.execute(_FIRST_BY_BYTES_OR_MSGID, {"sha": mail.sha256, "msgid": claim_msgid, "id": own}).first()
    else:
        first = conn.execute(_FIRST_BY_BYTES, {"sha": mail.sha256, "id": own}).first()
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
    if mail.id is not None:  # a stored mail: a concurrent winner makes this fail, and the intake runs it again
        ctx.session.flush()  # (a batch import's row fails the same way when it is written)
    ctx.note("dedupe: first time seen")
