"""MAX_TEXT_BYTES: a text body is read up to its last line end within the bound (the rest stays in the stored
mail), the same with the large-body fast path and with the full stdlib parse; a text part with a file name (an
attachment) is never cut."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import mime
from gateway.mime import MAX_TEXT_BYTES

ARGS: dict[str, Any] = {"max_depth": 50, "max_parts": 1000, "max_header_bytes": 1_000_000}


def _body(n_bytes: int) -> str:
    line = "line {:08d} of a very long text body\n"
    return "".join(line.format(i) for i in range(n_bytes // len(line.format(0)) + 1))


def _single(body: str, cte: str = "8bit") -> bytes:
    head = ("From: a@customer.example\nTo: support@example.com\nSubject: long\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: {cte}\n\n")
    return (head + body).replace("\n", "\r\n").encode()


def _mixed(body: str, attached: str) -> bytes:
    raw = ("From: a@customer.example\nTo: support@example.com\nSubject: long\nMIME-Version: 1.0\n"
           'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\nContent-Type: text/plain; charset=utf-8\n\n'
           f"{body}--b1\nContent-Type: text/csv; name=\"data.csv\"\nContent-Disposition: attachment; "
           f"filename=\"data.csv\"\n\n{attached}--b1--\n")
    return raw.replace("\n", "\r\n").encode()


def _fields(p: mime.ParsedMail) -> tuple:
    return (p.text, p.html, p.bounds, p.defects, [(a.filename, a.content_type, a.data) for a in p.attachments])


@pytest.mark.parametrize("make", [lambda b: _single(b), lambda b: _mixed(b, "a,b\n1,2\n")])
def test_a_long_text_body_is_cut_at_a_line_end_the_same_on_both_paths(make) -> None:
    raw = make(_body(MAX_TEXT_BYTES + 300_000))
    fast = mime._parse(raw, big_min=mime._BIG_BODY, **ARGS)
    full = mime._parse(raw, big_min=None, **ARGS)
    assert _fields(fast) == _fields(full)
    assert MAX_TEXT_BYTES * 0.9 < len(fast.text) <= MAX_TEXT_BYTES
    assert fast.text.endswith(" of a very long text body\n")  # cut after a whole line
    assert any("(bound MAX_TEXT_BYTES)" in b for b in fast.bounds), fast.bounds
    assert mime.parse_mail(raw).text == fast.text


def test_a_text_body_within_the_bound_and_a_long_text_attachment_are_read_whole() -> None:
    body = _body(MAX_TEXT_BYTES // 2)
    attached = _body(MAX_TEXT_BYTES + 100_000).replace(" of a very long text body", ",csv")
    p = mime.parse_mail(_mixed(body, attached))
    assert p.text == body[:-1]  # the line end before a boundary line belongs to the boundary
    assert [a.data for a in p.attachments] == [attached.replace("\n", "\r\n").encode()[:-2]]  # whole
    assert not any("MAX_TEXT_BYTES" in b for b in p.bounds)
