"""The send caps of the Outbound listener's rounds, decided when a row is queued (gateway.outbound.notify).

Mail caused by mail is held back by the loop guards meant for customers (notifications.max_per_ticket_10min,
max_per_recipient_day: gateway.outbound.ratelimit decides from the counts asked here); mail to staff is bounded
per ticket instead (staff.max_notices_per_ticket_hour). The per-recipient counts are remembered for the
transaction where gateway.db.write_locked_memo can, and kept up to date by the rows written.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from gateway.db import write_locked_memo
from gateway.models import Contact, OutboxMail, Ticket
from gateway.outbound import ratelimit


class SendCaps:
    """The caps of one Outbound listener: `for_mail` (the loop guards), `for_staff` (the per-ticket bound)."""

    def __init__(self, caps: ratelimit.Caps, staff_bound: int) -> None:
        self.caps = caps
        self.staff_bound = staff_bound

    def for_staff(self, s: Session, ticket: Ticket | None, emails: list[str], now: datetime) -> dict[str, str]:
        """Staff recipients held back by the per-ticket bound for mail to staff (a ticket gone wild)."""
        if ticket is None:
            return {}
        sent = s.scalar(_STAFF_SENT, {"ticket_id": ticket.id, "since": now - STAFF_WINDOW}) or 0
        if sent + len(emails) <= self.staff_bound:
            return {}
        room = max(self.staff_bound - sent, 0)
        why = (f"staff bound: {sent} mails to staff about ticket #{ticket.number} in an hour "
               f"(staff.max_notices_per_ticket_hour = {self.staff_bound})")
        return {e: why for e in emails[room:]}

    def for_mail(self, s: Session, ticket: Ticket | None, emails: list[str], now: datetime,
                 ticket_rounds: int | None = None) -> dict[str, str]:
        """Recipients held back by the loop guards, with the reason."""
        out: dict[str, str] = {}
        if ticket is not None:
            rounds = ticket_rounds
            if rounds is None:
                rounds = s.scalar(select(func.count(func.distinct(OutboxMail.batch))).where(
                    OutboxMail.ticket_id == ticket.id, OutboxMail.caused_by_mail.is_(True),
                    OutboxMail.status != "suppressed",
                    OutboxMail.created_at >= ratelimit.window_start(now, ratelimit.TICKET_WINDOW))) or 0
            if not ratelimit.ticket_round_allowed(rounds, self.caps):
                why = (f"rate cap: {rounds} notification rounds for ticket #{ticket.number} in 10 minutes "
                       f"(notifications.max_per_ticket_10min = {self.caps.max_per_ticket})")
                return {e: why for e in emails}
        counts = self.sent_today(s, emails, now)
        for e in emails:
            n = counts.get(e, 0)
            if not ratelimit.recipient_allowed(n, self.caps):
                out[e] = (f"rate cap: {n} mails to {e} in 24 hours "
                          f"(notifications.max_per_recipient_day = {self.caps.max_per_recipient})")
        return out

    def sent_today(self, s: Session, emails: list[str], now: datetime) -> dict[str, int]:
        """Mails caused by mail to each address in the rate-cap window. Within one transaction (where
        gateway.db.write_locked_memo can) a count is asked once and then kept up to date by `count_written`,
        for a minute: after that the window has moved on and it is asked again."""
        since = ratelimit.window_start(now, ratelimit.RECIPIENT_WINDOW)
        memo = write_locked_memo(s, "sent-per-recipient")
        if memo is None:
            return self._count_sent(s, emails, since)
        ask = [e for e in emails if e not in memo or since - memo[e][0] > _MEMO_FOR]
        if ask:
            found = self._count_sent(s, ask, since)
            for e in ask:
                memo[e] = (since, found.get(e, 0))
        return {e: memo[e][1] for e in emails}

    @staticmethod
    def count_written(s: Session, rows: list[dict[str, Any]]) -> None:
        """Keep the counts `sent_today` remembers up to date with rows caused by mail that were just written."""
        sent = write_locked_memo(s, "sent-per-recipient")
        if sent is None:
            return
        for row in rows:
            if row["status"] != "suppressed" and row["recipient"] in sent:
                since, n = sent[row["recipient"]]
                sent[row["recipient"]] = (since, n + 1)

    @staticmethod
    def _count_sent(s: Session, emails: list[str], since: datetime) -> dict[str, int]:
        if len(emails) == 1:  # the common case (the reporter): a plain statement, no IN list to expand
            return {emails[0]: s.connection().scalar(_SENT_TO_ONE, {"email": emails[0], "since": since}) or 0}
        return dict(s.connection().execute(_SENT_PER_RECIPIENT, {"emails": emails, "since": since}).all())


_MEMO_FOR = timedelta(minutes=1)
STAFF_WINDOW = timedelta(hours=1)
# mail to staff about one ticket in the window: rows to staff contacts, and to group members without one
# (those carry params.staff, and their contact_id is None): counted by the staff contacts' rows plus theirs
_STAFF_SENT = select(func.count(OutboxMail.id)).where(
    OutboxMail.ticket_id == bindparam("ticket_id"), OutboxMail.created_at >= bindparam("since"),
    OutboxMail.status != "suppressed", OutboxMail.caused_by_mail.is_(False),
    OutboxMail.event.in_(("staff_new_ticket", "comment", "internal_note", "assignment", "commands")),
    OutboxMail.contact_id.in_(select(Contact.id).where(Contact.role == "staff")))
_SENT_TO_ONE = select(func.count(OutboxMail.id)).where(
    OutboxMail.recipient == bindparam("email"), OutboxMail.caused_by_mail.is_(True),
    OutboxMail.status != "suppressed", OutboxMail.created_at >= bindparam("since"))
_SENT_PER_RECIPIENT = (select(OutboxMail.recipient, func.count(OutboxMail.id))
                       .where(OutboxMail.recipient.in_(bindparam("emails", expanding=True)),
                              OutboxMail.caused_by_mail.is_(True), OutboxMail.status != "suppressed",
                              OutboxMail.created_at >= bindparam("since"))
                       .group_by(OutboxMail.recipient))
