"""Issue 16, class 1: a damaged header block is read the way mail clients read it (mails made here)."""

from __future__ import annotations

import pytest

from gateway.headerblock import rejoin_lost_folds, skip_leading_junk
from gateway.mime import MailParseError, parse_mail

BODY = b"\nThe VPN drops every hour.\n"


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_subject_fold_without_whitespace_keeps_the_headers_below_it(eol: bytes) -> None:
    raw = eol.join([b"Subject: The VPN drops every hour since the upgrade",
                    b"of the office router last Monday", b"From: \"Carla Customer\" <carla@customer.example>",
                    b"To: support@example.com", b"", b"Since Monday.", b""])
    p = parse_mail(raw)
    assert p.subject == "The VPN drops every hour since the upgrade of the office router last Monday"
    assert (p.from_addr, p.from_name) == ("carla@customer.example", "Carla Customer")
    assert p.text.strip() == "Since Monday."
    assert any("without leading whitespace" in d for d in p.defects)


def test_several_lost_fold_lines_in_a_row() -> None:
    raw = b"From: a@customer.example\nSubject: one\ntwo\nthree\nMessage-ID: <m1@customer.example>\n" + BODY
    p = parse_mail(raw)
    assert p.subject == "one two three"
    assert p.message_id == "m1@customer.example"


def test_an_address_list_ending_in_a_comma_goes_on_on_the_next_line() -> None:
    raw = b"From: a@customer.example\nSubject: s\nCc: b@customer.example,\nc@customer.example\n" + BODY
    p = parse_mail(raw)
    assert [a for _, a in p.cc] == ["b@customer.example", "c@customer.example"]
    assert p.text.strip() == "The VPN drops every hour."


def test_a_body_without_separator_line_is_still_a_body() -> None:
    # no known header follows the odd line: the header block ends there, as the stdlib says
    raw = b"From: a@customer.example\nSubject: s\nHello, the printer is broken\nPlease help\n"
    p = parse_mail(raw)
    assert p.subject == "s"
    assert p.text.startswith("Hello, the printer is broken")
    assert not any("without leading whitespace" in d for d in p.defects)


def test_nothing_to_repair_returns_the_same_bytes() -> None:
    raw = b"From: a@customer.example\nSubject: s\n" + BODY
    assert rejoin_lost_folds(raw) == (raw, [])
    assert skip_leading_junk(raw) == (raw, None)


@pytest.mark.parametrize("junk", [
    b"\xef\xbb\xbf",  # a UTF-8 byte order mark
    b"\x1a\n",  # a stray byte line
    b"From carla@customer.example Mon Nov  2 09:00:00 2026\n>From nobody\n",  # mbox line, no blank line after
    b"%%% saved by webmail %%%\r\n",
])
def test_junk_before_the_first_header_is_skipped(junk: bytes) -> None:
    raw = junk + b"From: Carla <carla@customer.example>\nSubject: Printer\nTo: support@example.com\n" + BODY
    p = parse_mail(raw)
    assert (p.from_addr, p.subject) == ("carla@customer.example", "Printer")
    assert p.text.strip() == "The VPN drops every hour."
    assert p.defects and ("junk line" in p.defects[0] or "byte order mark" in p.defects[0])


@pytest.mark.parametrize("raw", [
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\n",
    b"line one\nline two\nline three\nline four\nFrom: a@customer.example\n\nx\n",  # too much junk
    b"hello\nfoo: bar\n\nx\n",  # not a field mail carries
])
def test_what_is_not_a_mail_stays_unreadable(raw: bytes) -> None:
    with pytest.raises(MailParseError):
        parse_mail(raw)
