"""The inbound flood cap (gateway.guard.flood): after `identify`, a sender over
`limits.mails_per_sender_per_hour` tickets and comments in the hour before this mail arrived is quarantined
with the reason 'flood' (never answered; an admin may replay it: `mail replay ID` releases the cap for it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.guard import flood
from gateway.outcomes import Quarantine
from gateway.pipeline import MailContext
from gateway.store.base import Asks, Upcoming

if TYPE_CHECKING:
    from gateway.config import Config


def asks(mail: Upcoming, config: Config) -> Asks:
    """Declared ahead: the count of the sender's tickets and comments in the hour before a stored mail arrived."""
    addr = mail.parsed.from_addr
    if not addr or mail.received_at is None:
        return Asks()
    since, until = flood.window(mail.received_at)
    return Asks(made_by=[(addr, since, until)])


def handle(ctx: MailContext) -> None:
    sender = ctx.sender_email
    if not sender:
        return
    limits = ctx.config.limits
    policy = flood.FloodPolicy.of(limits["mails_per_sender_per_hour"], limits["flood_exempt"])
    why = flood.exemption(policy, sender, bool(ctx.sender is not None and ctx.sender.is_staff))
    if why is not None:
        return
    if flood.REASON in (ctx.mail.released or []):
        ctx.note("flood: the cap was released for this mail by an admin (replay)")
        return
    since, until = flood.window(ctx.mail.received_at)
    made = ctx.store.mails_made_by(sender, since, until)
    if flood.allowed(policy, made):
        return
    ctx.note(f"flood: {made} tickets and comments from {sender} in the hour before this mail "
             f"(limits.mails_per_sender_per_hour = {policy.limit})")
    raise Quarantine(f"{flood.REASON}: more than {policy.limit} tickets and comments from {sender} in an hour")
