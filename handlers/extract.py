"""The visible text (quoted history and signature stripped from replies), the full text, sanitised HTML."""

from __future__ import annotations

import re

from gateway.pipeline import MailContext

# gateway.quotes (nh3, html.parser, the reply patterns) is imported where it is needed, when the first mail is
# extracted: an MTA pipe process that never gets that far starts faster without it.
_FORWARD_SUBJECT = re.compile(r"^\s*(?:\[[^\]]{0,40}\]\s*)?(?:fwd?|wg|tr|rv|enc|doorst|vl|vb)\s*:", re.I)


def cut_at_delimiters(text: str, delimiters: list[str], *, regex: bool = False) -> str:
    """The text before the first line that is one of the configured delimiter lines (quoted or not)."""
    wanted = [d.strip() for d in delimiters if d.strip()]
    if not wanted:
        return text
    patterns = [re.compile(d) for d in wanted] if regex else []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        bare = line.lstrip("> \t").strip()
        if (bare in wanted) if not regex else any(p.fullmatch(bare) for p in patterns):
            return "\n".join(lines[:i]).rstrip()
    return text


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None
    text = p.text.strip("\n")
    from_html = False
    if not text.strip() and p.html:
        text = ctx.ahead.html_to_text(p.html)
        from_html = True
    ctx.full_text = text
    ctx.html = ctx.ahead.sanitize_html(p.html) if p.html else None
    delimiters = ctx.config.gateway["body_delimiters"]
    cut = cut_at_delimiters(text, delimiters, regex=ctx.config.gateway["body_delimiters_regex"])
    if cut != text:
        ctx.note("extract: text cut at a configured delimiter line")
        text = cut
    from gateway.quotes import strip_html_reply, strip_reply

    if ctx.ticket is not None:
        visible = strip_html_reply(p.html) if from_html and p.html and not delimiters else strip_reply(text)
        ctx.body = visible
        if visible != text.strip():
            ctx.note(f"extract: quoted history/signature stripped ({len(text)} -> {len(visible)} characters)")
    elif _FORWARD_SUBJECT.match(p.subject):
        ctx.body = text.strip()  # a forward: what was forwarded is what the ticket is about
    else:
        # a new ticket: the quoted history of whatever the sender answered goes (the full text keeps it), the
        # sender's signature stays -- it tells the agent who wrote and how to reach them
        visible = (strip_html_reply(p.html, keep_signature=True) if from_html and p.html and not delimiters
                   else strip_reply(text, keep_signature=True))
        ctx.body = visible
        if visible != text.strip():
            ctx.note(f"extract: quoted history stripped from the description ({len(text)} -> {len(visible)} "
                     "characters; the full text keeps it)")
    if from_html:
        ctx.note("extract: HTML-only mail turned into text")
