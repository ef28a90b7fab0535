"""Parse the raw bytes (stdlib email, policy.default) with depth, part-count and charset guards; the bounds the
mail hit (gateway.mime: addresses, Message-IDs, header fields, parameter sections) go to the trace."""

from __future__ import annotations

from gateway.mime import MailParseError
from gateway.outcomes import Quarantine
from gateway.pipeline import MailContext
from gateway.store.ahead import OverBudget


def handle(ctx: MailContext) -> None:
    limits = ctx.config.limits
    try:
        ctx.parsed = ctx.ahead.parse(ctx.raw, max_depth=limits["max_mime_depth"], max_parts=limits["max_mime_parts"])
    except OverBudget as e:  # the preparation worker was killed (limits.mail_cpu_seconds), or died twice
        if e.crashed:
            ctx.note("parse: the preparation worker died on this mail, twice")
            raise Quarantine("over budget: the mail crashed the preparation worker twice") from e
        ctx.note(f"parse: more than limits.mail_cpu_seconds ({limits['mail_cpu_seconds']:g} s of CPU)")
        raise Quarantine("over budget") from e
    except MailParseError as e:
        ctx.note(f"parse: {e.reason}")
        raise Quarantine(f"unparseable mail: {e.reason}") from e
    except RecursionError as e:
        raise Quarantine("unparseable mail: MIME structure too deep to parse") from e
    p = ctx.parsed
    ctx.note(f"parse: Message-ID {p.message_id or '(none)'}, {len(p.attachments)} attachment(s)"
             + (f", defects: {'; '.join(p.defects[:5])}" if p.defects else ""))
    for bound in p.bounds:
        ctx.note(f"parse: bound hit, truncated: {bound}")
