"""Pure parts of gateway.outbound: tokens, rate caps, backoff, composing, templates."""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway import ourmail
from gateway.outbound import compose, ratelimit
from gateway.outbound.render import EVENTS, TemplateError, Templates, one_line, sample_context
from gateway.outbound.sender import backoff

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


# Tokens ------------------------------------------------------------------------------------------------------
def test_token_binds_ticket_and_recipient():
    tok = ourmail.make_token(SECRET, ticket_id=7, ticket_number=42, recipient="Alice@Customer.example")
    assert tok.startswith("42-") and len(tok) == 3 + 24
    assert ourmail.verify(SECRET, tok, ticket_id=7, recipient="alice@customer.example")
    assert ourmail.verify(SECRET, tok.upper(), ticket_id=7, recipient="alice@customer.example")
    assert not ourmail.verify(SECRET, tok, ticket_id=7, recipient="mallory@customer.example")
    assert not ourmail.verify(SECRET, tok, ticket_id=8, recipient="alice@customer.example")
    assert not ourmail.verify(b"another secret of enough length!", tok, ticket_id=7, recipient="alice@customer.example")
    assert not ourmail.verify(SECRET, "42-" + "a" * 24, ticket_id=7, recipient="alice@customer.example")
    assert not ourmail.verify(SECRET, "garbage", ticket_id=7, recipient="alice@customer.example")


def test_token_has_at_least_96_bits():
    tok = ourmail.make_token(SECRET, ticket_id=1, ticket_number=1, recipient="a@b.example")
    mac = tok.split("-", 1)[1]
    assert len(base64.b32decode(mac.upper() + "=" * (-len(mac) % 8))) * 8 >= 96


def test_token_addresses():
    addr = ourmail.token_address("support@example.com", "42-" + "a" * 24)
    assert addr == "support+42-" + "a" * 24 + "@example.com"
    bases = ("support@example.com",)
    assert ourmail.token_of_address(addr, bases) == "42-" + "a" * 24
    assert ourmail.token_of_address("<" + addr.upper() + ">", bases) == "42-" + "a" * 24
    assert ourmail.token_of_address("other+42-" + "a" * 24 + "@example.com", bases) is None
    assert ourmail.token_of_address("support+hello@example.com", bases) is None
    assert ourmail.token_of_address("support@example.com", bases) is None
    assert len(addr.partition("@")[0]) <= 64


def test_secret_generated_once_and_kept(tmp_path):
    a = ourmail.load_secret("", tmp_path)
    b = ourmail.load_secret("", tmp_path)
    assert a == b and len(a) >= 64
    assert (tmp_path / ourmail.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert ourmail.load_secret("x" * 24, tmp_path) == b"x" * 24
    with pytest.raises(ValueError):
        ourmail.load_secret("short", tmp_path)


def test_short_configured_secret_is_a_config_error():
    from gateway.config import ConfigError, validate

    with pytest.raises(ConfigError, match="outbound.reply_secret"):
        validate({"outbound": {"reply_secret": "tooshort"}})


# Rate caps and addresses -----------------------------------------------------------------------------------------
def test_caps():
    caps = ratelimit.Caps(max_per_ticket=3, max_per_recipient=2)
    assert ratelimit.ticket_round_allowed(2, caps) and not ratelimit.ticket_round_allowed(3, caps)
    assert ratelimit.recipient_allowed(1, caps) and not ratelimit.recipient_allowed(2, caps)
    assert ratelimit.reject_notice_allowed(0) and not ratelimit.reject_notice_allowed(1)
    assert ratelimit.window_start(NOW, ratelimit.TICKET_WINDOW) == NOW - timedelta(minutes=10)


@pytest.mark.parametrize("addr", ["mailer-daemon@x.example", "MAILER-DAEMON@x.example", "noreply@x.example",
                                  "no-reply@x.example", "do-not-reply@x.example", "postmaster@x.example",
                                  "list-bounces@x.example", "owner-list@x.example", "bounces+123@x.example"])
def test_automatic_addresses(addr):
    assert ratelimit.is_automatic_address(addr)


@pytest.mark.parametrize("addr", ["alice@x.example", "norbert@x.example", "replies@x.example"])
def test_people(addr):
    assert not ratelimit.is_automatic_address(addr)


@pytest.mark.parametrize("addr,ok", [("alice@x.example", True), ("a.b+c@x-y.example", True),
                                      ("a\r\nb@x.example", False), ("a b@x.example", False),
                                      ("<a@x.example>", False), ("a@x.example,b@y.example", False),
                                      ('"a"@x.example', False), ("a@", False), ("", False), ("a..b@x.example", False)])
def test_sendable_addresses(addr, ok):
    assert ratelimit.is_sendable_address(addr) is ok


# Backoff ----------------------------------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap():
    got = [backoff(i, 60, 3600).total_seconds() for i in range(1, 10)]
    assert got[:6] == [60, 120, 240, 480, 960, 1920]
    assert max(got) == 3600 and got == sorted(got)


# Composing ----------------------------------------------------------------------------------------------------
def outgoing(**kw: Any) -> compose.Outgoing:
    base: dict[str, Any] = dict(
        from_name="Support", from_addr="support@example.com", to=[("Alice", "alice@customer.example")],
        subject="[#1] Hello", text="Hi\n", html="<p>Hi</p>\n", message_id="tg.x.1@example.com", date=NOW,
        reply_to="support+1-" + "a" * 24 + "@example.com")
    base.update(kw)
    return compose.Outgoing(**base)


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


@pytest.mark.parametrize("evil", ["a\r\nBcc: x@evil.example", "a\nBcc: x@evil.example", "a\rBcc: x@evil.example",
                                  "a\u2028Bcc: x@evil.example", "a\x00\x0bBcc: x@evil.example",
                                  "=?utf-8?q?a=0D=0ABcc=3A_x=40evil=2Eexample?=",
                                  "=?utf-8?q?=3D=3Futf-8=3Fq=3Fa=3D0D=3D0ABcc=3D3A=5Fx=3D40evil=3D2Eexample=3F=3D?=",
                                  "x =?utf-8?b?YQ0KQmNjOiB4QGV2aWwuZXhhbXBsZQ==?= y",
                                  "=?bogus?q?a=0D=0ABcc=3A_x=40evil=2Eexample?="])
def test_no_header_injection_through_subject_or_names(evil):
    raw = compose.build(outgoing(subject=evil, from_name=evil, to=[(evil, "alice@customer.example")],
                                 cc=[(evil, "carol@customer.example")], thread_topic=evil))
    msg = parse(raw)
    assert msg.get_all("Bcc") is None
    assert [k for k in msg.keys()].count("To") == 1
    assert b"\r\nBcc" not in raw and b"\nBcc" not in raw.replace(b"\r\n", b"\n").split(b"\n\n")[0]
    assert raw.count(b"\r\n") == raw.count(b"\n")  # every line ends CRLF, no bare CR or LF


def test_bad_addresses_are_dropped_from_headers():
    raw = compose.build(outgoing(cc=[("X", "x@evil.example\r\nBcc: y@evil.example"), ("C", "carol@customer.example")]))
    msg = parse(raw)
    assert str(msg["Cc"]) == "C <carol@customer.example>"
    with pytest.raises(ValueError):
        compose.build(outgoing(to=[("X", "not an address")]))


def test_headers_for_threading_and_loops():
    raw = compose.build(outgoing(in_reply_to="b@customer.example", references=["a@customer.example", "bad id",
                                                                               "b@customer.example"],
                                 thread_topic="Hello", thread_index=compose.thread_index(NOW, "k", NOW),
                                 auto_submitted="auto-replied", precedence_bulk=True, loop_value="example.com"))
    msg = parse(raw)
    assert str(msg["In-Reply-To"]) == "<b@customer.example>"
    assert str(msg["References"]) == "<a@customer.example> <b@customer.example>"
    assert str(msg["Auto-Submitted"]) == "auto-replied" and str(msg["Precedence"]) == "bulk"
    assert str(msg["X-Auto-Response-Suppress"]) == "All"
    assert str(msg[ourmail.LOOP_HEADER]) == "example.com"
    assert len(base64.b64decode(str(msg["Thread-Index"]))) == 27
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_references_chain_keeps_first_and_latest():
    ids = [f"m{i}@x.example" for i in range(50)]
    chain = compose.references_chain(ids)
    assert chain[0] == "m0@x.example" and chain[-1] == "m49@x.example" and len(chain) == 20


def test_thread_index_shares_the_thread_prefix():
    a = base64.b64decode(compose.thread_index(NOW, "example.com/1", NOW))
    b = base64.b64decode(compose.thread_index(NOW, "example.com/1", NOW + timedelta(hours=3)))
    c = base64.b64decode(compose.thread_index(NOW, "example.com/2", NOW))
    assert a[:22] == b[:22] and a[:22] != c[:22]


def test_our_message_ids():
    mid = ourmail.new_message_id("example.com", 42)
    assert ourmail.is_our_message_id(mid, "example.com")
    assert ourmail.is_our_message_id(f"<{mid}>", "EXAMPLE.com")
    assert not ourmail.is_our_message_id(mid, "other.example")
    assert not ourmail.is_our_message_id("CAF123@mail.gmail.com", "example.com")
    assert not ourmail.is_our_message_id("abc@example.com", "example.com")


# Templates ----------------------------------------------------------------------------------------------------
def test_builtin_templates_render_every_event():
    t = Templates()
    t.check()
    for event in EVENTS:
        out = t.render(event, sample_context(event))
        assert out.subject and "\n" not in out.subject and out.text.strip() and "<" in out.html


def test_html_is_escaped_but_sanitised_comment_html_is_kept():
    from markupsafe import Markup

    ctx = sample_context("comment")
    ctx["comment"]["body"] = "<script>x</script>"
    ctx["comment"]["html"] = Markup("")
    ctx["ticket"]["subject"] = "<b>bold</b>"
    out = Templates().render("comment", ctx)
    assert "<script>" not in out.html and "&lt;script&gt;" in out.html and "&lt;b&gt;" in out.html
    ctx["comment"]["html"] = Markup("<p><em>kept</em></p>")
    assert "<em>kept</em>" in Templates().render("comment", ctx).html


def test_strict_undefined_in_override(tmp_path):
    (tmp_path / "status.html.j2").write_text("{{ tickt.number }}")
    with pytest.raises(TemplateError, match="status"):
        Templates(tmp_path).check()
    with pytest.raises(TemplateError, match="not a directory"):
        Templates(tmp_path / "missing")


def test_one_line():
    assert one_line("a\r\n b\tc\u2028d\x00e") == "a b c d e"


def test_header_text_decodes_and_cleans():
    from gateway.outbound.compose import header_text

    assert header_text("=?utf-8?q?Gr=C3=BC=C3=9Fe?=") == "Grüße"
    assert header_text("=?utf-8?q?a=0D=0ABcc=3A_x?=") == "a Bcc: x"
    assert "\n" not in header_text("=?utf-8?q?=3D=3Futf-8=3Fq=3Fa=3D0A=3F=3D?=")
