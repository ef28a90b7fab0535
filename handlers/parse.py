"""Parse the raw bytes (stdlib email, policy.default) with depth, part-count and charset guards."""

from __future__ import annotations

from gateway.mime import MailParseError, parse_mail
from gateway.outcomes import Quarantine
from gateway.pipeline import MailContext


def handle(ctx: MailContext) -> None:
    limits = ctx.config.limits
    try:
        ctx.parsed = parse_mail(ctx.raw, max_depth=limits["max_mime_depth"], max_parts=limits["max_mime_parts"])
    except MailParseError as e:
        ctx.note(f"parse: {e.reason}")
        raise Quarantine(f"unparseable mail: {e.reason}") from e
    except RecursionError as e:
        raise Quarantine("unparseable mail: MIME structure too deep to parse") from e
    p = ctx.parsed
    ctx.note(f"parse: Message-ID {p.message_id or '(none)'}, {len(p.attachments)} attachment(s)"
             + (f", defects: {'; '.join(p.defects[:5])}" if p.defects else ""))
