"""The same mail again (same Message-ID from the same sender, or the same bytes) makes nothing new.

The winning mail holds unique claims on its sha256 and on hash(Message-ID, sender): two deliveries racing
each other cannot both win (the loser's transaction fails and is run again, and then sees the duplicate).
"""

from __future__ import annotations

import hashlib

from typing import Iterable

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from gateway.db import write_locked_memo
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


_CLAIMED = (select(InboundMail.claim_sha256, InboundMail.claim_msgid)
            .where(or_(InboundMail.claim_sha256.in_(bindparam("shas", expanding=True)),
                       InboundMail.claim_msgid.in_(bindparam("msgids", expanding=True)))))
# Claims known to be held by no mail, found by `preload` (a memo of the write-locked transaction: SQLite only,
# dropped on every rollback); a mail that takes a claim removes it.
ABSENT = "absent-claims"


def msgid_claim(message_id: str, sender: str) -> str:
    return hashlib.sha256(f"{message_id}\x00{sender}".encode("utf-8", "surrogatepass")).hexdigest()


def msgid_claim_of(message_id: str | None, from_addr: str | None, envelope_from: str | None) -> str | None:
    """The Message-ID claim of a mail: hash(Message-ID, sender), None without a Message-ID."""
    sender = (from_addr or envelope_from or "").lower()
    return msgid_claim(message_id, sender) if message_id else None


def preload(session: Session, claims: Iterable[tuple[str, str | None]]) -> None:
    """For the next mails of a batch import: which of their (sha256, Message-ID claim) pairs no mail holds,
    in one query. Only where the transaction holds the write lock (SQLite): elsewhere each mail asks."""
    absent = write_locked_memo(session, ABSENT)
    if absent is None:
        return
    keys = [("s", sha) for sha, _ in claims] + [("m", m) for _, m in claims if m]
    if not keys:
        return
    held = set()
    for sha, msgid in session.connection().execute(
            _CLAIMED, {"shas": sorted({k for t, k in keys if t == "s"}),
                       "msgids": sorted({k for t, k in keys if t == "m"})}):
        held.add(("s", sha))
        held.add(("m", msgid))
    absent.update(dict.fromkeys(set(keys) - held, True))


def handle(ctx: MailContext) -> None:
    assert ctx.parsed is not None
    mail = ctx.mail
    claim_msgid = msgid_claim_of(ctx.parsed.message_id, ctx.parsed.from_addr, mail.envelope_from)
    own = mail.id if mail.id is not None else 0  # 0: not written yet (a batch import), no row to skip
    absent = write_locked_memo(ctx.session, ABSENT)
    if absent and ("s", mail.sha256) in absent and (claim_msgid is None or ("m", claim_msgid) in absent):
        first = None  # preloaded: nobody holds either claim
    elif claim_msgid:
        # plain rows on the connection: no ORM objects, and no autoflush (a row not written yet gets its claims
        # in its INSERT, not in an UPDATE)
        first = ctx.session.connection().execute(
            _FIRST_BY_BYTES_OR_MSGID, {"sha": mail.sha256, "msgid": claim_msgid, "id": own}).first()
    else:
        first = ctx.session.connection().execute(_FIRST_BY_BYTES, {"sha": mail.sha256, "id": own}).first()
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
    if absent:  # this mail holds them now
        absent.pop(("s", mail.sha256), None)
        absent.pop(("m", claim_msgid), None)
    if mail.id is not None:  # a stored mail: a concurrent winner makes this fail, and the intake runs it again
        ctx.session.flush()  # (a batch import's row fails the same way when it is written)
    ctx.note("dedupe: first time seen")
