"""The visible text (quoted history and signature stripped from replies), the full text, sanitised HTML."""

from __future__ import annotations

from gateway.pipeline import MailContext
from gateway.quotes import html_to_text, sanitize_html, strip_html_reply, strip_reply


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None
    text = p.text.strip("\n")
    from_html = False
    if not text.strip() and p.html:
        text = html_to_text(p.html)
        from_html = True
    ctx.full_text = text
    ctx.html = sanitize_html(p.html) if p.html else None
    if ctx.ticket is not None:
        visible = strip_html_reply(p.html) if from_html and p.html else strip_reply(text)
        ctx.body = visible
        if visible != text.strip():
            ctx.note(f"extract: quoted history/signature stripped ({len(text)} -> {len(visible)} characters)")
    else:
        ctx.body = text.strip()
    if from_html:
        ctx.note("extract: HTML-only mail turned into text")
