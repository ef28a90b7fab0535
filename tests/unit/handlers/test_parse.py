"""`parse` alone: the mail parsed (here or by the preparation worker), the bounds it hit, what quarantines it."""

from __future__ import annotations

import pytest
from handlerkit import MakeCtx
from mails import make_mail

from gateway.handlers import parse
from gateway.outcomes import Quarantine
from gateway.prepare import Prepared, prepare_one


def test_a_mail_is_parsed_and_traced(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(make_mail(message_id="<m1@customer.example>", attachments=[("a.txt", "text/plain", b"x")]),
                   parsed=False)
    parse.handle(ctx)
    assert ctx.parsed is not None and ctx.parsed.message_id == "m1@customer.example"
    assert ctx.parsed.from_addr == "alice@customer.example" and len(ctx.parsed.attachments) == 1
    assert ctx.trace == ["parse: Message-ID m1@customer.example, 1 attachment(s)"]


def test_the_worker_s_parse_is_the_same(make_ctx: MakeCtx) -> None:
    raw = make_mail(subject="Ahead")
    here, ahead = make_ctx(raw, parsed=False), make_ctx(raw, parsed=False, prepared=prepare_one(raw, 20, 500, None))
    parse.handle(here)
    parse.handle(ahead)
    assert ahead.parsed is not None and here.parsed is not None
    assert (ahead.parsed.subject, ahead.parsed.message_id, ahead.trace) == ("Ahead", here.parsed.message_id,
                                                                            here.trace)


def test_too_deep_a_mime_tree_is_quarantined(make_ctx: MakeCtx) -> None:
    raw = b"From: a@customer.example\r\nTo: support@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    for i in range(5):
        raw += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    raw += b"Content-Type: text/plain\r\n\r\nhi\r\n"
    ctx = make_ctx(raw, parsed=False, config={"limits": {"max_mime_depth": 3}})
    with pytest.raises(Quarantine) as e:
        parse.handle(ctx)
    assert e.value.reason == "unparseable mail: MIME nesting deeper than 3 levels"
    assert ctx.parsed is None


@pytest.mark.parametrize("prepared,reason,note", [
    (Prepared(over_budget=True), "over budget", "parse: more than limits.mail_cpu_seconds (2 s of CPU)"),
    (Prepared(crashed=True), "over budget: the mail crashed the preparation worker twice",
     "parse: the preparation worker died on this mail, twice"),
    (Prepared(sha256="0" * 64, parse_error="not a mail"), "unparseable mail: not a mail", "parse: not a mail"),
])
def test_what_the_worker_met_quarantines_the_mail(make_ctx: MakeCtx, prepared: Prepared, reason: str,
                                                  note: str) -> None:
    ctx = make_ctx(parsed=False, prepared=prepared)
    with pytest.raises(Quarantine) as e:
        parse.handle(ctx)
    assert e.value.reason == reason and ctx.trace == [note]
