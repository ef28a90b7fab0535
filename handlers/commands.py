"""A staff member's mail: the /command lines at its top are taken out of the text (gateway.mailcommands) for
`act` to apply after the comment; `/internal` or mail to the note address makes the comment an internal note.

Commands count only from a staff contact (staff.commands on) and, where sender authentication is configured
(authentication.trusted_authserv_ids or verify), only from mail that passed it: anyone else's slash lines stay
plain text, and the trace says why. A mail whose text was only commands adds no comment (handlers/thread.py).
"""

from __future__ import annotations

from gateway import auth, mailcommands, ourmail
from gateway.pipeline import MailContext


def authentication_configured(ctx: MailContext) -> bool:
    a = ctx.config.values["authentication"]
    return bool(a["trusted_authserv_ids"]) or bool(a["verify"])


def refusal(ctx: MailContext) -> str | None:
    """Why this mail's slash lines are not commands, or None when they are."""
    if not ctx.config.values["staff"]["commands"]:
        return "staff.commands is off"
    if ctx.sender is None or not ctx.sender.is_staff:
        return f"{ctx.sender_email} is not staff"
    verdict = getattr(ctx.auth, "verdict", None)
    if authentication_configured(ctx) and verdict != auth.PASS:
        return f"the mail did not pass sender authentication ({verdict or 'no result'})"
    return None


def note_address(ctx: MailContext) -> str | None:
    """The plain note address (support+note@...) among the mail's recipients, if any."""
    sub = ctx.config.values["staff"]["note_subaddress"]
    if not sub:
        return None
    p = ctx.parsed
    assert p is not None
    bases = ctx.config.gateway_addresses
    for addr in list(ctx.mail.envelope_to or []) + [a for _, a in p.to + p.cc]:
        if ourmail.subaddress_of(addr, bases) == sub:
            return addr
    return None


def handle(ctx: MailContext) -> None:
    staff = ctx.sender is not None and ctx.sender.is_staff
    if staff and not ctx.internal:
        to_note = note_address(ctx)
        if to_note:
            ctx.internal = f"sent to the note address {to_note}"
    if not staff or "/" not in ctx.body[:mailcommands.MAX_LINE * 2]:
        return
    parsed = mailcommands.parse(ctx.body)
    if not parsed.any:
        return
    why = refusal(ctx)
    if why is not None:
        ctx.note(f"commands: slash lines kept as text: {why}")
        return
    ctx.commands = parsed
    ctx.body = parsed.rest
    ctx.full_text = mailcommands.parse(ctx.full_text).rest
    ctx.html = None  # the HTML still holds the command lines: the comment is the text without them
    if parsed.internal:
        ctx.internal = "/internal"
    ctx.note(f"commands: {len(parsed.commands)} command(s), {len(parsed.refused)} refused line(s) taken out of "
             "the text" + (" (nothing else: no comment)" if not parsed.rest.strip() else ""))
