"""gateway.mime parses with policy.default's settings, reusing parsed header objects: the same answers."""

from __future__ import annotations

import email.policy

import pytest
from mails import make_mail

from gateway import mime


def parsed_fields(raw: bytes) -> dict:
    p = mime.parse_mail(raw)
    d = {k: v for k, v in vars(p).items() if k != "message"}
    d["headers"] = [(k, str(v), type(v).__name__) for k, v in p.message.items()]
    d["parts"] = [(part.get_content_type(), part.get_params(), str(part.get("content-disposition")))
                  for part in p.message.walk()]
    return d


@pytest.mark.parametrize("raw", [
    make_mail(),
    make_mail(html="<p>hi</p>", attachments=[("a.pdf", "application/pdf", b"%PDF" * 100)]),
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.example>\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\n"
    b"x\r\n--b\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\ny\r\n--b--\r\n",
    b"From: a@x.example\r\nContent-Type: text/plain; name=\"" + b"n" * 5000 + b"\"\r\n\r\nbody\r\n",
])
def test_same_result_as_policy_default(monkeypatch, raw):
    mine = parsed_fields(raw)
    again = parsed_fields(raw)  # now from reused header objects
    monkeypatch.setattr(mime, "_POLICY", email.policy.default)
    assert mine == again == parsed_fields(raw)


def test_the_policy_is_policy_default_and_the_reuse_is_bounded():
    assert mime._POLICY.header_factory is email.policy.default.header_factory
    for name in ("linesep", "utf8", "raise_on_defect", "refold_source", "max_line_length", "cte_type"):
        assert getattr(mime._POLICY, name) == getattr(email.policy.default, name)
    for i in range(mime._HEADER_CACHE_SIZE + 10):
        mime._POLICY.header_fetch_parse("Subject", f"s{i}")
    assert len(mime._HEADER_CACHE) <= mime._HEADER_CACHE_SIZE
    long = "x" * (mime._HEADER_CACHE_VALUE + 1)
    assert mime._POLICY.header_fetch_parse("Subject", long) == long
    assert ("Subject", long) not in mime._HEADER_CACHE
