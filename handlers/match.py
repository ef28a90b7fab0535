"""Which ticket a mail belongs to: In-Reply-To/References against every Message-ID known for a ticket,
then a subject tag like [#42]. A match counts only for a participant of that ticket; a stranger's mail opens a
ticket of its own, linked to the one it named. A reply to a closed ticket reopens it within
gateway.reopen_days, else opens a new ticket linked to the old one.
"""

from __future__ import annotations

import re
from datetime import timedelta

from gateway.config import Config
from gateway.models import Ticket
from gateway.pipeline import MailContext
from gateway.store.base import MAX_PER_MAIL, Asks, Upcoming


def tag_pattern(prefix: str) -> re.Pattern[str]:
    """[#42], and the same tag after words as other trackers write it ([Project - Bug #42]); glued ids such
    as [12345#1] are not tags."""
    return re.compile(r"\[(?:[^\[\]]{0,100}\s)?" + re.escape(prefix) + r"\s*(\d{1,12})\]", re.IGNORECASE)


def _referenced(in_reply_to: list[str], references: list[str]) -> list[str]:
    """The Message-IDs a mail names, most relevant first: In-Reply-To, then References from the newest."""
    return list(dict.fromkeys(in_reply_to + list(reversed(references))))


def asks(mail: Upcoming, config: Config) -> Asks:
    """Declared ahead: the tickets that know the Message-IDs the mail names, and those its subject tags name
    (a bounded number of Message-IDs: this is only a look-up ahead)."""
    p = mail.parsed
    tags = tag_pattern(config.gateway["subject_tag_prefix"])
    return Asks(message_ids=_referenced(p.in_reply_to, p.references)[:MAX_PER_MAIL],
                numbers=[int(m.group(1)) for m in tags.finditer(p.subject)])


def _candidates(ctx: MailContext) -> list[tuple[str, Ticket]]:
    p = ctx.parsed
    assert p is not None
    found: list[tuple[str, Ticket]] = []
    for mid, t in ctx.store.tickets_by_message_ids(_referenced(p.in_reply_to, p.references)):
        found.append((f"{'In-Reply-To' if mid in p.in_reply_to else 'References'} <{mid}>", t))
    for m in tag_pattern(ctx.config.gateway["subject_tag_prefix"]).finditer(p.subject):
        tagged = ctx.store.ticket(int(m.group(1)))
        if tagged is not None:
            found.append((f"subject tag {m.group(0)}", tagged))
    return [_followed(ctx, how, t) for how, t in found]


def _followed(ctx: MailContext, how: str, ticket: Ticket) -> tuple[str, Ticket]:
    """A merged ticket stands for the one it was merged into."""
    if ticket.merged_into_id is None:
        return how, ticket
    into = ctx.store.followed(ticket)
    return f"{how} (#{ticket.number}, merged into #{into.number})", into


def handle(ctx: MailContext) -> None:
    if ctx.ticket is not None:  # an earlier handler (a reply token) already matched
        return
    seen: set[int] = set()
    for how, ticket in _candidates(ctx):
        if ticket.id in seen:
            continue
        seen.add(ticket.id)
        why = ctx.store.is_participant(ticket, ctx.sender, ctx.sender_email)
        if why is None:
            ctx.note(f"match: {how} names ticket #{ticket.number}, but {ctx.sender_email} is not a participant "
                     "of it (not reporter, watcher, staff, nor a member of an organisation whose members share its "
                     "tickets): opening a ticket of its own")
            if ctx.related is None:
                ctx.related, ctx.related_kind = ticket, "related"
                ctx.related_reason = (f"{ctx.sender_email} referred to #{ticket.number} ({how}) without being a "
                                      "participant")
            continue
        ctx.note(f"match: {how} -> ticket #{ticket.number} ({ctx.sender_email} is {why})")
        if ticket.status == "closed":
            closed = ticket.closed_at or ticket.updated_at
            limit = timedelta(days=ctx.config.gateway["reopen_days"])
            if ctx.clock() - closed > limit:
                ctx.note(f"match: #{ticket.number} was closed {closed:%Y-%m-%d}, more than "
                         f"{ctx.config.gateway['reopen_days']} days ago: opening a follow-up ticket")
                ctx.related, ctx.related_kind = ticket, "follow_up_of"
                ctx.related_reason = f"reply to #{ticket.number}, closed on {closed:%Y-%m-%d}"
                return
        ctx.ticket = ticket
        ctx.related = None
        return
    if not seen:
        ctx.note("match: no ticket referenced: a new ticket")
