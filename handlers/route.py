"""Defaults for a new ticket (group, priority, type) from the address the mail was sent to ([[routes]]).

The envelope recipients decide (SMTP/LMTP); without an envelope (IMAP, files) the To and Cc headers do.
"""

from __future__ import annotations

from gateway.pipeline import MailContext
from gateway.routing import route_for


def handle(ctx: MailContext) -> None:
    if not ctx.config.values.get("routes"):
        return
    p = ctx.parsed
    assert p is not None
    recipients = list(ctx.mail.envelope_to or []) or [a for _, a in p.to + p.cc]
    ctx.routing = route_for(ctx.config, recipients)
    if ctx.routing:
        ctx.note("route: " + ", ".join(f"{k} {v}" for k, v in sorted(ctx.routing.items())))
