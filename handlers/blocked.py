"""A blocked sender (`users block EMAIL`): after `identify`, every mail from a contact an admin blocked is
quarantined with the reason (kept, never threaded, never answered; `users unblock` and `mail replay ID` let
a later mail, or this one, through)."""

from __future__ import annotations

from gateway.outcomes import Quarantine
from gateway.pipeline import MailContext

REASON = "blocked sender"


def handle(ctx: MailContext) -> None:
    sender = ctx.sender
    if sender is None or not sender.blocked:
        return
    why = sender.blocked_reason or "blocked by an admin"
    ctx.note(f"blocked: {ctx.sender_email} is blocked ({why})")
    raise Quarantine(f"{REASON} {ctx.sender_email}: {why}")
