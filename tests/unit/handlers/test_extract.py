"""`extract` alone: the visible text of a reply (quotes and signature stripped), a new ticket's description
(its signature kept), text from an HTML-only mail, sanitised HTML, configured delimiter lines."""

from __future__ import annotations

from handlerkit import MakeCtx
from mails import make_mail

from gateway.handlers import extract
from gateway.prepare import prepare_one
from gateway.store.memory import InMemoryStore

REPLY = "Thanks, that helped.\n\n-- \nAlice\n\nOn Mon, 2 Nov 2026, Support wrote:\n> Try turning it off.\n"


def test_a_reply_keeps_only_what_is_new(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(body=REPLY)
    ctx.ticket = store.open_ticket(store.add_contact("alice@customer.example"))
    extract.handle(ctx)
    assert ctx.body == "Thanks, that helped."
    assert ctx.full_text == REPLY.strip("\n") and ctx.html is None
    assert ctx.trace[0].startswith("extract: quoted history/signature stripped")


def test_a_new_ticket_keeps_the_signature(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(body=REPLY)
    extract.handle(ctx)
    assert ctx.body.startswith("Thanks, that helped.") and "Alice" in ctx.body and "> Try" not in ctx.body


def test_an_html_only_mail_becomes_text_and_its_html_is_sanitised(make_ctx: MakeCtx) -> None:
    raw = (b"From: alice@customer.example\r\nTo: support@example.com\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b"<p>Hello <b>there</b></p><script>alert(1)</script>\r\n")
    for prepared in (None, prepare_one(raw, 20, 500, None)):
        ctx = make_ctx(raw, prepared=prepared)
        extract.handle(ctx)
        assert "Hello" in ctx.body and "there" in ctx.body
        assert ctx.html is not None and "<b>there</b>" in ctx.html and "script" not in ctx.html
        assert ctx.trace[-1] == "extract: HTML-only mail turned into text"


def test_a_configured_delimiter_cuts_the_text(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(body="New text.\n##- Please type your reply above this line -##\nold\n",
                   config={"gateway": {"body_delimiters": ["##- Please type your reply above this line -##"]}})
    extract.handle(ctx)
    assert ctx.body == "New text." and "extract: text cut at a configured delimiter line" in ctx.trace


def test_a_forward_keeps_what_was_forwarded(make_ctx: MakeCtx) -> None:
    body = "FYI\n\n---------- Forwarded message ---------\nFrom: bob@x.example\n\nThe original.\n"
    ctx = make_ctx(make_mail(subject="Fwd: printer", body=body))
    extract.handle(ctx)
    assert ctx.body == body.strip()
