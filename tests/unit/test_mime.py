"""Unit tests for gateway.mime: small mails built inline, one requirement per test."""

from __future__ import annotations

import base64
import datetime as dt
import random
import re
import time
from typing import Any

import pytest

from gateway.mime import MailParseError, ParsedMail, Part, parse_mail, safe_filename

SURROGATE = re.compile("[\ud800-\udfff]")


def mail(headers: str = "", body: str | bytes = "hello\n", *, base: bool = True) -> bytes:
    """A mail from header lines (\n separated) and a body; adds a sane From/To/Subject unless base=False."""
    top = "From: Alice <alice@example.com>\nTo: desk@example.org\nSubject: test\n" if base else ""
    head = (top + headers).rstrip("\n") + "\n\n"
    b = body.encode("utf-8") if isinstance(body, str) else body
    return head.encode("utf-8", "surrogateescape") + b


def all_strings(pm: ParsedMail) -> list[str]:
    out = [pm.subject, pm.from_name, pm.text, pm.html or "", pm.from_problem or "", pm.from_addr or ""]
    out += [pm.message_id or "", *pm.in_reply_to, *pm.references, *pm.reply_to, *pm.defects]
    out += [x for pair in pm.to + pm.cc for x in pair]
    for a in pm.attachments:
        out += [a.filename, a.content_type, a.content_id or ""]
    return out


def assert_clean(pm: ParsedMail) -> None:
    for s in all_strings(pm):
        assert not SURROGATE.search(s), repr(s)


def multipart(subtype: str, parts: list[str], boundary: str = "BOUNDARY", headers: str = "") -> str:
    body = "".join(f"--{boundary}\n{p}\n" for p in parts) + f"--{boundary}--\n"
    return f'{headers}Content-Type: multipart/{subtype}; boundary="{boundary}"\n\n{body}'


def leaf(ctype: str, payload: str, extra: str = "") -> str:
    return f"Content-Type: {ctype}\n{extra}\n{payload}"


def parse_multipart(subtype: str, parts: list[str], headers: str = "") -> ParsedMail:
    text = multipart(subtype, parts)
    head, body = text.split("\n\n", 1)
    return parse_mail(mail(headers + head + "\nMIME-Version: 1.0\n", body))


# ---------------------------------------------------------------- not an email at all


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "empty"),
        (b"   \r\n\r\n\t\n", "blank"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "pdf"),
        (bytes(random.Random(1234).getrandbits(8) for _ in range(4096)), "random bytes"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504, "outlook .msg (OLE)"),
        (b"Hi Bob,\n\nthanks for the report.\n", "a plain text without headers"),
    ],
)
def test_not_an_email_raises_with_reason(raw: bytes, why: str) -> None:
    with pytest.raises(MailParseError) as exc:
        parse_mail(raw)
    assert exc.value.reason and "not an email" in exc.value.reason


def test_mail_parse_error_reason_attribute() -> None:
    err = MailParseError("MIME nesting deeper than 50 levels")
    assert err.reason == "MIME nesting deeper than 50 levels"
    assert str(err) == err.reason


def test_mbox_from_line_and_leading_blank_lines_accepted() -> None:
    pm = parse_mail(b"From alice@example.com Sat Jan  3 01:05:34 1996\n" + mail())
    assert pm.from_addr == "alice@example.com"
    pm = parse_mail(b"   \n\n" + mail())
    assert pm.from_addr == "alice@example.com" and pm.subject == "test"


# ---------------------------------------------------------------- simple mail, identifiers


def test_simple_mail_fields() -> None:
    raw = mail(
        "Cc: \"Bob, B.\" <BOB@Example.COM>, carol@example.net\n"
        "Reply-To: Help <Help@Example.com>\n"
        "Message-ID:  < abc.123@mx.example.com >\n"
        "In-Reply-To: <parent@example.com> (comment)\n"
        "References: <root@example.com>\n <parent@example.com>\n"
        "Date: Tue, 01 Aug 2023 10:00:00 +0200\n",
        "Body line\r\n",
    )
    pm = parse_mail(raw)
    assert isinstance(pm.message.get_content_type(), str)
    assert pm.message_id == "abc.123@mx.example.com"
    assert pm.in_reply_to == ["parent@example.com"]
    assert pm.references == ["root@example.com", "parent@example.com"]
    assert pm.subject == "test"
    assert (pm.from_addr, pm.from_name, pm.from_problem) == ("alice@example.com", "Alice", None)
    assert pm.to == [("", "desk@example.org")]
    assert pm.cc == [("Bob, B.", "bob@example.com"), ("", "carol@example.net")]
    assert pm.reply_to == ["help@example.com"]
    assert pm.date == dt.datetime(2023, 8, 1, 8, 0, tzinfo=dt.UTC)
    assert pm.text == "Body line\n"
    assert pm.html is None
    assert pm.attachments == []


def test_no_message_id() -> None:
    pm = parse_mail(mail())
    assert pm.message_id is None
    pm = parse_mail(mail("Message-ID: <>\n"))
    assert pm.message_id is None
    pm = parse_mail(mail("Message-ID:   \n"))
    assert pm.message_id is None


def test_bare_message_ids_without_brackets() -> None:
    pm = parse_mail(mail("Message-ID: bare@id.example\nReferences: a@x b@y\n"))
    assert pm.message_id == "bare@id.example"
    assert pm.references == ["a@x", "b@y"]


def test_unparseable_date_is_none() -> None:
    pm = parse_mail(mail("Date: the day after tomorrow\n"))
    assert pm.date is None
    assert any("Date" in d for d in pm.defects)
    pm = parse_mail(mail("Date: Tue, 01 Aug 2023 10:00:00 -0000\n"))
    assert pm.date is not None and pm.date.tzinfo is not None and pm.date.utcoffset() == dt.timedelta(0)


def test_subject_decoded_cleaned_and_capped() -> None:
    pm = parse_mail(mail("Subject: =?utf-8?B?w4RyZ2Vy?= =?utf-8?Q?_mit_=C3=BC?=\n \tfolded\x01 part\n", base=False))
    assert pm.subject == "Ärger mit ü folded part"
    long = "x" * 5000
    pm = parse_mail(mail(f"Subject: {long}\n"))
    assert pm.subject == "test"  # the first Subject wins
    pm = parse_mail(mail(f"From: a@example.com\nSubject: {long}\n", base=False))
    assert len(pm.subject) == 998


def test_rfc2047_multibyte_character_split_across_words() -> None:
    # "テスト" split in the middle of a UTF-8 sequence over two encoded words
    b = "テスト".encode()
    w1 = base64.b64encode(b[:4]).decode()
    w2 = base64.b64encode(b[4:]).decode()
    pm = parse_mail(mail(f"From: a@example.com\nSubject: =?utf-8?B?{w1}?= =?utf-8?B?{w2}?=\n", base=False))
    assert pm.subject == "テスト"


# ---------------------------------------------------------------- From


def test_no_from() -> None:
    pm = parse_mail(mail("To: desk@example.org\nSubject: x\n", base=False))
    assert pm.from_addr is None and pm.from_problem == "no From header"


def test_from_with_two_addresses() -> None:
    pm = parse_mail(mail("From: a@example.com, b@example.com\n", base=False))
    assert pm.from_addr is None and pm.from_problem == "From has 2 addresses"


def test_two_from_headers() -> None:
    pm = parse_mail(mail("From: a@example.com\nFrom: b@example.com\n", base=False))
    assert pm.from_addr is None and pm.from_problem is not None and "2 From headers" in pm.from_problem


def test_from_malformed_double_at() -> None:
    pm = parse_mail(mail("From: a@evil.example@corp.example\n", base=False))
    assert pm.from_addr is None
    assert pm.from_problem == "From address is malformed: a@evil.example@corp.example"


@pytest.mark.parametrize(
    "value, addr, name",
    [
        ('"Smith, John" <John.Smith@Example.COM>', "john.smith@example.com", "Smith, John"),
        ("jsmith@somenet.foo (John Smith)", "jsmith@somenet.foo", "John Smith"),
        ("=?utf-8?Q?J=C3=BCrgen?= <j@example.de>", "j@example.de", "Jürgen"),
        ("<@relay.example:user@example.com>", "user@example.com", ""),
    ],
)
def test_from_forms(value: str, addr: str, name: str) -> None:
    pm = parse_mail(mail(f"From: {value}\n", base=False))
    assert (pm.from_addr, pm.from_name, pm.from_problem) == (addr, name, None)


def test_from_an_address_as_unquoted_name_is_ambiguous() -> None:
    """The standard reading takes the first address (alice), ours the angle-addr (bob): the mail acts as nobody
    (identify quarantines it); the parsed fields keep our reading."""
    pm = parse_mail(mail("From: alice@example.com <bob@example.com>\n", base=False))
    assert pm.from_addr == "bob@example.com" and pm.ambiguous is not None
    assert "bob@example.com here but as alice@example.com by the standard RFC 5322 reading" in pm.ambiguous


def test_from_empty_and_garbage() -> None:
    pm = parse_mail(mail("From: \n", base=False))
    assert pm.from_addr is None and pm.from_problem == "From header is empty"
    pm = parse_mail(mail("From: just a name\n", base=False))
    assert pm.from_addr is None and pm.from_problem == "From address is malformed: just a name"


def test_bad_to_entries_skipped_never_raise() -> None:
    to = 'good@example.com, bad@@x, "unterminated <x@y>, undisclosed-recipients:;'
    pm = parse_mail(mail(f"From: a@example.com\nTo: {to}\n", base=False))
    assert ("", "good@example.com") in pm.to
    assert all("@" in a for _, a in pm.to)


def test_group_syntax() -> None:
    pm = parse_mail(
        mail("From: a@example.com\nTo: Team: b@example.com, C <c@example.com>;, d@example.com\n", base=False)
    )
    assert pm.to == [("", "b@example.com"), ("C", "c@example.com"), ("", "d@example.com")]


def test_one_megabyte_to_header_is_fast_and_parsed() -> None:
    to = ", ".join(f"User {i} <user{i}@example.com>" for i in range(30000))
    assert len(to) > 1_000_000
    raw = mail(f"From: a@example.com\nTo: {to}\nSubject: big\n", base=False)
    t0 = time.process_time()
    pm = parse_mail(raw, max_header_bytes=2_000_000, max_addresses=30000)
    assert time.process_time() - t0 < 2.0
    assert len(pm.to) == 30000 and pm.to[-1] == ("User 29999", "user29999@example.com")
    t0 = time.process_time()
    pm = parse_mail(raw)  # default limits: the first 1,000 addresses of the first 1,000,000 characters
    assert time.process_time() - t0 < 2.0
    assert len(pm.to) == 1000 and pm.to[-1] == ("User 999", "user999@example.com")
    assert pm.bounds == ["To has more than 1000 addresses: only the first 1000 read (bound MAX_ADDRESSES)"]
    assert any("To header longer than" in d for d in pm.defects)


def test_lines_over_998_characters() -> None:
    long_word = "y" * 5000
    raw = mail(f"X-Long: {long_word}\nIn-Reply-To: <{long_word}@x>\n", ("z" * 20000) + "\nend\n")
    pm = parse_mail(raw)
    assert pm.text.startswith("z" * 20000) and pm.text.endswith("end\n")
    assert pm.in_reply_to and len(pm.in_reply_to[0]) <= 998
    assert_clean(pm)


# ---------------------------------------------------------------- charsets


def test_unknown_charset_falls_back() -> None:
    raw = mail("Content-Type: text/plain; charset=x-unknown\n", "caf\xe9 ok".encode("latin-1"))
    pm = parse_mail(raw)
    assert pm.text == "café ok"
    assert any("unknown charset 'x-unknown'" in d and "windows-1252" in d for d in pm.defects)
    raw = mail("Content-Type: text/plain; charset=x-unknown\n", "café ok".encode())
    pm = parse_mail(raw)
    assert pm.text == "café ok"
    assert any("unknown charset 'x-unknown', decoded as utf-8" in d for d in pm.defects)


def test_wrong_charset_latin1_declared_utf8() -> None:
    raw = mail("Content-Type: text/plain; charset=utf-8\n", "Grüße, €5".encode("windows-1252"))
    pm = parse_mail(raw)
    assert pm.text == "Grüße, €5"
    assert any("not valid 'utf-8'" in d and "windows-1252" in d for d in pm.defects)


def test_latin1_last_resort_and_no_surrogates() -> None:
    # 0x81 and 0x8d are undefined in windows-1252: latin-1 is the last resort
    raw = mail("Content-Type: text/plain; charset=utf-8\n", b"a\x81b\x8dc\xff")
    pm = parse_mail(raw)
    assert pm.text == "a\x81b\x8dc\xff"
    assert any("latin-1" in d for d in pm.defects)
    assert_clean(pm)


def test_non_text_codec_names_are_not_used() -> None:
    for cs in ("base64", "rot13", "unicode_escape", "zlib"):
        raw = mail(f"Content-Type: text/plain; charset={cs}\n", b"caf\\ud800 \xe9")
        pm = parse_mail(raw)
        assert pm.text.startswith("caf\\ud800"), cs
        assert_clean(pm)


def test_8bit_bytes_in_headers() -> None:
    raw = (
        b"From: J\xc3\xbcrgen <j@example.de>\n"
        b"To: Fran\xe7ois <f@example.fr>\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe und caf\xe9\n\nbody\n"
    )
    pm = parse_mail(raw)
    assert pm.from_name == "Jürgen" and pm.from_addr == "j@example.de"
    assert pm.to == [("François", "f@example.fr")]
    # a header with mixed encodings cannot be both: never surrogates, utf-8 else windows-1252
    assert pm.subject == "GrÃ¼ÃŸe und café"  # the whole value is one encoding: windows-1252 here
    assert_clean(pm)


def test_8bit_utf8_subject_exact() -> None:
    pm = parse_mail(b"From: a@example.com\nSubject: Testov\xc3\xa1c\xc3\xad email\n\nx\n")
    assert pm.subject == "Testovácí email"
    pm = parse_mail(b"From: a@example.com\nSubject: caf\xe9\n\nx\n")
    assert pm.subject == "café"


def test_rfc2047_unknown_charset_in_header() -> None:
    pm = parse_mail(mail("From: a@example.com\nSubject: =?x-unknown?Q?caf=E9?=\n", base=False))
    assert pm.subject == "café"
    assert any("unknown charset" in d for d in pm.defects)


# ---------------------------------------------------------------- body choice


def test_alternative_prefers_plain_for_text_and_html_for_html() -> None:
    pm = parse_multipart(
        "alternative",
        [
            leaf("text/plain; charset=utf-8", "plain version"),
            leaf("text/html; charset=utf-8", "<p>html version</p>"),
        ],
    )
    assert pm.text.strip() == "plain version"
    assert pm.html is not None and pm.html.strip() == "<p>html version</p>"
    assert pm.attachments == []


def test_alternative_html_first_order_does_not_matter() -> None:
    pm = parse_multipart("alternative", [leaf("text/html", "<b>h</b>"), leaf("text/plain", "p")])
    assert pm.text.strip() == "p" and (pm.html or "").strip() == "<b>h</b>"


def test_non_multipart_html_mail() -> None:
    pm = parse_mail(mail("Content-Type: text/html; charset=utf-8\n", "<p>only html</p>\n"))
    assert pm.text == ""
    assert pm.html == "<p>only html</p>\n"


def test_mixed_body_then_attachments_and_text_attachment() -> None:
    pm = parse_multipart(
        "mixed",
        [
            multipart("alternative", [leaf("text/plain", "the body"), leaf("text/html", "<p>the body</p>")], "ALT"),
            leaf("text/plain; name=notes.txt", "attached text", "Content-Disposition: attachment\n"),
            leaf("text/plain", "log line", 'Content-Disposition: inline; filename="server.log"\n'),
            leaf("application/pdf", base64.b64encode(b"%PDF-1.4 fake").decode(), "Content-Transfer-Encoding: base64\n"),
        ],
    )
    assert pm.text.strip() == "the body"
    assert (pm.html or "").strip() == "<p>the body</p>"
    names = [(a.filename, a.content_type) for a in pm.attachments]
    assert names == [("notes.txt", "text/plain"), ("server.log", "text/plain"), ("attachment-3.pdf", "application/pdf")]
    assert pm.attachments[2].data == b"%PDF-1.4 fake"


def test_mixed_several_inline_text_parts_are_the_body() -> None:
    pm = parse_multipart(
        "mixed",
        [
            leaf("text/plain", "first"),
            leaf(
                "image/png",
                base64.b64encode(b"\x89PNG").decode(),
                "Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=a.png\n",
            ),
            leaf("text/plain", "second"),
        ],
    )
    assert "first" in pm.text and "second" in pm.text
    assert [a.filename for a in pm.attachments] == ["a.png"]


def test_mixed_empty_plain_then_html() -> None:
    pm = parse_multipart("mixed", [leaf("text/plain", ""), leaf("text/html", "<p>The html part.</p>")])
    assert pm.text.strip() == ""
    assert "The html part." in (pm.html or "")
    assert pm.attachments == []


def test_html_only_body_with_plain_footer_keeps_footer_as_attachment() -> None:
    pm = parse_multipart("mixed", [leaf("text/html", "<p>main</p>"), leaf("text/plain", "list footer")])
    assert pm.text == "" and "main" in (pm.html or "")
    assert [a.data.strip() for a in pm.attachments] == [b"list footer"]


def test_related_html_with_inline_image_keeps_content_id() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    pm = parse_multipart(
        "alternative",
        [
            leaf("text/plain", "see image"),
            multipart(
                "related",
                [
                    leaf("text/html", '<img src="cid:img1@x">'),
                    leaf(
                        "image/png",
                        base64.b64encode(png).decode(),
                        "Content-Transfer-Encoding: base64\nContent-ID: <img1@x>\n",
                    ),
                ],
                "REL",
            ),
        ],
    )
    assert pm.text.strip() == "see image"
    assert "cid:img1@x" in (pm.html or "")
    assert len(pm.attachments) == 1
    img = pm.attachments[0]
    assert (img.content_id, img.inline, img.content_type, img.data) == ("img1@x", True, "image/png", png)
    assert img.filename == "attachment-1.png"


def test_unused_alternatives_are_not_attachments_but_calendar_is() -> None:
    pm = parse_multipart(
        "alternative",
        [
            leaf("text/plain", "p"),
            leaf("text/watch-html", "<b>w</b>"),
            leaf("text/html", "<b>h</b>"),
            leaf("text/calendar; method=REQUEST", "BEGIN:VCALENDAR"),
        ],
    )
    assert [(a.filename, a.content_type) for a in pm.attachments] == [("attachment-1.ics", "text/calendar")]


def test_root_attachment_only() -> None:
    pm = parse_mail(
        mail(
            'Content-Type: application/pdf; name="x.pdf"\nContent-Transfer-Encoding: base64\n',
            base64.b64encode(b"PDF").decode(),
        )
    )
    assert pm.text == "" and pm.html is None
    assert [(a.filename, a.data) for a in pm.attachments] == [("x.pdf", b"PDF")]


def test_missing_mime_boundary() -> None:
    raw = mail(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed\n", "--foo\nContent-Type: text/plain\n\nhello\n--foo--\n"
    )
    pm = parse_mail(raw)
    assert "hello" in pm.text
    assert any("NoBoundaryInMultipartDefect" in d for d in pm.defects)


def test_declared_boundary_never_found() -> None:
    raw = mail('MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="nothere"\n', "just text\n")
    pm = parse_mail(raw)
    assert "just text" in pm.text
    assert any("StartBoundaryNotFoundDefect" in d for d in pm.defects)


def test_missing_close_boundary() -> None:
    raw = mail(
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n',
        "--b\nContent-Type: text/plain\n\nbody text\n",
    )
    pm = parse_mail(raw)
    assert "body text" in pm.text
    assert any("CloseBoundaryNotFoundDefect" in d for d in pm.defects)


def test_nul_removed_from_body() -> None:
    pm = parse_mail(mail("", b"a\x00b\n"))
    assert pm.text == "ab\n"


# ---------------------------------------------------------------- attachments


def test_bad_base64_decoded_leniently_with_defect() -> None:
    good = base64.b64encode(b"hello world!").decode()
    pm = parse_multipart(
        "mixed",
        [
            leaf("text/plain", "body"),
            leaf("application/octet-stream; name=a.bin", good[:-3] + "!!\n", "Content-Transfer-Encoding: base64\n"),
        ],
    )
    assert len(pm.attachments) == 1
    assert pm.attachments[0].data.startswith(b"hello wor")
    assert any("Base64" in d for d in pm.defects)


def test_rfc2231_and_rfc2047_filenames() -> None:
    pm = parse_multipart(
        "mixed",
        [
            leaf("text/plain", "b"),
            leaf(
                "application/octet-stream",
                "x",
                "Content-Disposition: attachment; filename*=utf-8''%E3%83%86%E3%82%B9%E3%83%88.txt\n",
            ),
            leaf(
                "application/octet-stream",
                "x",
                'Content-Disposition: attachment; filename="=?utf-8?B?w4RyZ2VyLnBkZg==?="\n',
            ),
            leaf(
                "application/octet-stream",
                "x",
                "Content-Disposition: attachment;\n filename*0*=iso-8859-1''caf%E9;\n filename*1=\".doc\"\n",
            ),
            leaf('application/octet-stream; name="from-content-type.bin"', "x"),
            leaf(
                'application/octet-stream; name="ct.bin"', "x", 'Content-Disposition: attachment; filename="cd.bin"\n'
            ),
        ],
    )
    assert [a.filename for a in pm.attachments] == [
        "テスト.txt",
        "Ärger.pdf",
        "café.doc",
        "from-content-type.bin",
        "cd.bin",
    ]


def test_duplicate_names_made_unique() -> None:
    parts = [leaf("text/plain", "body")]
    parts += [
        leaf("application/pdf", "x", 'Content-Disposition: attachment; filename="report.pdf"\n') for _ in range(3)
    ]
    parts.append(leaf("application/pdf", "x", 'Content-Disposition: attachment; filename="REPORT.pdf"\n'))
    pm = parse_multipart("mixed", parts)
    assert [a.filename for a in pm.attachments] == ["report.pdf", "report (2).pdf", "report (3).pdf", "REPORT (4).pdf"]


def test_nested_message_is_one_attachment() -> None:
    inner = "From: x@example.com\nSubject: Original: problem\nMessage-ID: <inner@x>\n" + multipart(
        "mixed", [leaf("text/plain", "inner body"), leaf("application/pdf; name=inner.pdf", "x")], "INNER"
    )
    pm = parse_multipart(
        "mixed",
        [leaf("text/plain", "see forwarded"), leaf("message/rfc822", inner, "Content-Disposition: attachment\n")],
    )
    assert pm.text.strip() == "see forwarded"
    assert len(pm.attachments) == 1
    a = pm.attachments[0]
    assert a.content_type == "message/rfc822"
    assert a.filename == "Original: problem.eml"
    assert a.data.startswith(b"From: x@example.com\nSubject: Original: problem\n")
    assert b"inner body" in a.data and b"--INNER--" in a.data
    assert pm.message_id is None  # the inner Message-ID is not the outer one


def test_nested_message_without_subject() -> None:
    pm = parse_multipart("mixed", [leaf("text/plain", "b"), leaf("message/rfc822", "From: x@example.com\n\nhi\n")])
    assert [(a.filename, a.content_type) for a in pm.attachments] == [("attachment-1.eml", "message/rfc822")]
    assert pm.attachments[0].data == b"From: x@example.com\n\nhi\n"


def test_nested_message_raw_bytes_crlf_and_8bit() -> None:
    inner = b"From: x@example.com\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nbody \xe9\r\n"
    outer = (
        b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        + inner
        + b"\r\n--b--\r\n"
    )
    pm = parse_mail(outer)
    assert [a.filename for a in pm.attachments] == ["Grüße.eml"]
    assert pm.attachments[0].data == inner  # the line ending before the boundary belongs to the boundary
    assert pm.text == "hi"


def test_winmail_dat_kept_as_is() -> None:
    blob = b"\x78\x9f\x3e\x22" + bytes(range(256))
    pm = parse_multipart(
        "mixed",
        [
            leaf("text/plain", "body"),
            leaf(
                'application/ms-tnef; name="winmail.dat"',
                base64.b64encode(blob).decode(),
                "Content-Transfer-Encoding: base64\n",
            ),
        ],
    )
    assert [(a.filename, a.content_type, a.data) for a in pm.attachments] == [
        ("winmail.dat", "application/ms-tnef", blob)
    ]


def test_pgp_signed_body_and_signature_attachment() -> None:
    pm = parse_multipart(
        'signed; micalg=pgp-sha256; protocol="application/pgp-signature"',
        [
            multipart(
                "mixed",
                [
                    leaf("text/plain", "signed body"),
                    leaf("text/plain; name=a.txt", "att", "Content-Disposition: attachment\n"),
                ],
                "IN",
            ),
            leaf(
                'application/pgp-signature; name="signature.asc"',
                "-----BEGIN PGP SIGNATURE-----\n...\n-----END PGP SIGNATURE-----",
            ),
        ],
    )
    assert pm.text.strip() == "signed body"
    assert [(a.filename, a.content_type) for a in pm.attachments] == [
        ("a.txt", "text/plain"),
        ("signature.asc", "application/pgp-signature"),
    ]
    assert pm.attachments[1].data.startswith(b"-----BEGIN PGP SIGNATURE-----")


def test_pgp_encrypted_gives_no_body_and_two_attachments() -> None:
    pm = parse_multipart(
        'encrypted; protocol="application/pgp-encrypted"',
        [
            leaf("application/pgp-encrypted", "Version: 1"),
            leaf('application/octet-stream; name="encrypted.asc"', "-----BEGIN PGP MESSAGE-----"),
        ],
    )
    assert pm.text == "" and pm.html is None
    assert [a.content_type for a in pm.attachments] == ["application/pgp-encrypted", "application/octet-stream"]


def test_delivery_report_parts() -> None:
    pm = parse_multipart(
        "report; report-type=delivery-status",
        [
            leaf("text/plain", "Your message could not be delivered."),
            leaf(
                "message/delivery-status",
                "Reporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; gone@example.com\nStatus: 5.1.1\n",
            ),
            leaf("text/rfc822-headers", "From: a@example.com\nSubject: hi\n"),
        ],
    )
    assert "could not be delivered" in pm.text
    kinds = [(a.content_type, a.filename) for a in pm.attachments]
    assert kinds == [("message/delivery-status", "attachment-1.txt"), ("text/rfc822-headers", "attachment-2.txt")]
    assert b"Status: 5.1.1" in pm.attachments[0].data and b"Reporting-MTA" in pm.attachments[0].data


# ---------------------------------------------------------------- safe_filename


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\x", "x"),
        ("C:\\Windows\\evil.exe", "evil.exe"),
        ("C:evil.exe", "evil.exe"),
        ("a\x00b.txt", "ab.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("zero\u200bwidth\ufeff\u2066.pdf", "zerowidth.pdf"),
        (".htaccess", "htaccess"),
        ("...", "attachment-7.pdf"),
        ("..", "attachment-7.pdf"),
        ("", "attachment-7.pdf"),
        (None, "attachment-7.pdf"),
        ("dir/", "dir"),
        ("line\r\nbreak.txt", "line break.txt"),
        ("CON.txt", "_CON.txt"),
        ("ok name (1).tar.gz", "ok name (1).tar.gz"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name, content_type="application/pdf", index=7) == expected


def test_safe_filename_length_keeps_extension() -> None:
    out = safe_filename("a" * 300 + ".pdf", content_type="application/pdf", index=1)
    assert out.endswith(".pdf") and len(out.encode()) == 255
    out = safe_filename("ä" * 300 + ".docx", content_type="application/pdf", index=1)
    assert out.endswith(".docx") and len(out.encode()) <= 255 and "\ufffd" not in out
    out = safe_filename("x." + "e" * 300, content_type="text/plain", index=1)
    assert len(out.encode()) <= 255 and out


def test_safe_filename_fallback_extension_from_content_type() -> None:
    assert safe_filename(None, content_type="image/png", index=3) == "attachment-3.png"
    assert safe_filename(None, content_type="message/rfc822", index=1) == "attachment-1.eml"
    assert safe_filename(None, content_type="application/x-weird", index=2) == "attachment-2.bin"


def test_safe_filename_surrogates_removed() -> None:
    assert safe_filename("a\udce9b.txt", content_type="text/plain", index=1) == "ab.txt"


@pytest.mark.parametrize(
    "disposition, expected",
    [
        ('filename="../../etc/passwd"', "passwd"),
        ('filename="/etc/passwd"', "passwd"),
        ('filename="..\\\\x"', "x"),
        ("filename*=utf-8''a%00b.txt", "ab.txt"),
        ("filename*=utf-8''evil%E2%80%AEfdp.exe", "evilfdp.exe"),
        ('filename="' + "n" * 300 + '.pdf"', "n" * 251 + ".pdf"),
    ],
)
def test_attachment_names_are_safe_in_parse_mail(disposition: str, expected: str) -> None:
    pm = parse_multipart(
        "mixed",
        [leaf("text/plain", "b"), leaf("application/pdf", "x", f"Content-Disposition: attachment; {disposition}\n")],
    )
    assert [a.filename for a in pm.attachments] == [expected]


# ---------------------------------------------------------------- guards


def nested_tree(levels: int) -> bytes:
    out = [b"From: a@example.com\nSubject: deep\nMIME-Version: 1.0\n"]
    for i in range(levels):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i))
    out.append(b"Content-Type: text/plain\n\nhello\n")
    for i in reversed(range(levels)):
        out.append(b"--b%d--\n" % i)
    return b"".join(out)


def test_2000_level_nested_tree_is_rejected_quickly() -> None:
    raw = nested_tree(2000)
    t0 = time.process_time()
    with pytest.raises(MailParseError) as exc:
        parse_mail(raw)
    assert time.process_time() - t0 < 2.0
    assert exc.value.reason == "MIME nesting deeper than 50 levels"


@pytest.mark.parametrize("levels", [51, 60, 99, 120, 900])
def test_nesting_just_over_the_limit_is_rejected(levels: int) -> None:
    with pytest.raises(MailParseError, match="MIME nesting deeper than 50 levels"):
        parse_mail(nested_tree(levels))


def test_nesting_at_the_limit_is_accepted() -> None:
    pm = parse_mail(nested_tree(50))
    assert pm.text == "hello"  # the line ending before a boundary belongs to the boundary


def test_nested_message_rfc822_counts_towards_depth() -> None:
    raw = b"From: a@example.com\nSubject: s\n"
    for _ in range(60):
        raw += b"Content-Type: message/rfc822\n\nFrom: a@example.com\n"
    raw += b"\nhello\n"
    with pytest.raises(MailParseError, match="nesting"):
        parse_mail(raw)


def test_50000_part_message_is_rejected_quickly() -> None:
    body = b"".join(b"--p\nContent-Type: text/plain\n\nx\n" for _ in range(50000)) + b"--p--\n"
    raw = (
        b'From: a@example.com\nSubject: many\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="p"\n\n' + body
    )
    t0 = time.process_time()
    with pytest.raises(MailParseError) as exc:
        parse_mail(raw)
    assert time.process_time() - t0 < 2.0
    assert exc.value.reason == "message has more than 1000 MIME parts"


def test_part_limit_is_exact() -> None:
    def many(n: int) -> bytes:
        body = b"".join(b"--p\nContent-Type: application/octet-stream\n\nx\n" for _ in range(n)) + b"--p--\n"
        return b'From: a@example.com\nContent-Type: multipart/mixed; boundary="p"\n\n' + body

    pm = parse_mail(many(1000))  # read; the first MAX_ATTACHMENTS kept, and said so
    assert len(pm.attachments) == 100 and pm.bounds == [
        "1000 attachments: only the first 100 kept, the rest stay in the original mail (bound MAX_ATTACHMENTS)"
    ]
    with pytest.raises(MailParseError):
        parse_mail(many(1001))
    assert len(parse_mail(many(20), max_parts=20).attachments) == 20
    with pytest.raises(MailParseError, match="more than 19 MIME parts"):
        parse_mail(many(20), max_parts=19)


# ---------------------------------------------------------------- robustness sweep


@pytest.mark.parametrize("seed", range(40))
def test_mutated_mails_never_crash(seed: int) -> None:
    rng = random.Random(seed)
    base = bytearray(
        mail(
            "MIME-Version: 1.0\nCc: =?utf-8?B?w4Q=?= <c@example.com>\nDate: Tue, 01 Aug 2023 10:00:00 +0200\n",
            multipart(
                "mixed",
                [
                    leaf("text/plain; charset=utf-8", "hällo"),
                    leaf(
                        "application/pdf; name*=utf-8''r%C3%A9.pdf",
                        base64.b64encode(b"x" * 50).decode(),
                        "Content-Transfer-Encoding: base64\n",
                    ),
                    leaf("message/rfc822", "Subject: in\n\nx"),
                ],
            ).split("\n\n", 1)[1],
            base=True,
        ).replace(b"Subject: test\n", b'Subject: test\nContent-Type: multipart/mixed; boundary="BOUNDARY"\n')
    )
    for _ in range(rng.randint(1, 30)):
        pos = rng.randrange(len(base))
        op = rng.random()
        if op < 0.4:
            base[pos] = rng.randrange(256)
        elif op < 0.7:
            del base[pos : pos + rng.randint(1, 20)]
        else:
            base[pos:pos] = bytes(rng.choice([b"\n", b"--BOUNDARY\n", b"=?", b"\xff", b";", b'"', b"\x00"]))
    try:
        pm = parse_mail(bytes(base))
    except MailParseError as exc:
        assert exc.reason
        return
    assert isinstance(pm, ParsedMail)
    assert all(isinstance(a, Part) for a in pm.attachments)
    assert_clean(pm)


# ---------------------------------------------------------------- large bodies (kept out of the stdlib parser)

from gateway import mime as _mime  # noqa: E402

PLACEHOLDER = "[gateway.mime placeholder "


def slow_parse(raw: bytes, **kw: int) -> ParsedMail:
    """The plain path: the whole mail through the stdlib parser."""
    args: dict[str, Any] = {"max_depth": 50, "max_parts": 1000, "max_header_bytes": 1_000_000, **kw}
    return _mime._parse(raw, big_min=None, **args)


def fields(pm: ParsedMail) -> tuple:
    return (
        pm.message_id,
        pm.in_reply_to,
        pm.references,
        pm.subject,
        pm.from_addr,
        pm.from_name,
        pm.from_problem,
        pm.reply_to,
        pm.to,
        pm.cc,
        pm.date,
        pm.text,
        pm.html,
        [(a.filename, a.content_type, a.data, a.content_id, a.inline) for a in pm.attachments],
        pm.defects,
    )


def placeholders(pm: ParsedMail) -> int:
    payloads = (_mime._parsed_payload(p) for p in pm.message.walk())
    return sum(1 for p in payloads if isinstance(p, str) and p.startswith(PLACEHOLDER))


def streamed(pm: ParsedMail) -> ParsedMail:
    """A mail parsed with stream_large=True, its attachments' data read from their sources (small pieces)."""
    for a in pm.attachments:
        if a.source is not None:
            assert a.data == b""
            a.data, a.source = b"".join(a.source.chunks(size=1000)), None
    return pm


def assert_same_as_slow(raw: bytes, *, fast: bool = True) -> ParsedMail:
    pm = parse_mail(raw)
    assert fields(pm) == fields(slow_parse(raw))
    assert (placeholders(pm) > 0) == fast, "fast path taken" if not fast else "fast path not taken"
    assert fields(streamed(parse_mail(raw, stream_large=True))) == fields(pm)
    return pm


def rnd(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def b64(data: bytes, nl: str = "\n") -> str:
    return base64.encodebytes(data).decode().replace("\n", nl)


def att(ctype: str, body: str, name: str, cte: str = "base64", nl: str = "\n", extra: str = "") -> str:
    return (
        f'Content-Type: {ctype}; name="{name}"{nl}Content-Transfer-Encoding: {cte}{nl}'
        f'Content-Disposition: attachment; filename="{name}"{nl}{extra}{nl}{body}'
    )


def mp(
    subtype: str, parts: list[str], boundary: str, nl: str = "\n", close: bool = True, pre: str = "", epi: str = ""
) -> str:
    body = pre + "".join(f"--{boundary}{nl}{p}{nl}" for p in parts) + (f"--{boundary}--{nl}{epi}" if close else "")
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"{nl}{nl}{body}'


def top(body: str, nl: str = "\n") -> bytes:
    head = nl.join(["From: Alice <alice@example.com>", "To: desk@example.org", "Subject: big", "MIME-Version: 1.0", ""])
    return (head + body).encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_big_nested_multiparts_same_as_slow_path(nl: str) -> None:
    pdf, png, zipb = rnd(300_000, 1), rnd(100_000, 2), rnd(70_000, 3)
    inner = mp(
        "alternative",
        [
            f"Content-Type: text/plain{nl}{nl}plain body",
            mp(
                "related",
                [
                    f"Content-Type: text/html{nl}{nl}<img src=cid:i>",
                    att("image/png", b64(png, nl), "i.png", nl=nl, extra=f"Content-ID: <i>{nl}"),
                ],
                "REL",
                nl,
            ),
        ],
        "ALT",
        nl,
    )
    nested = mp("mixed", [att("application/zip", b64(zipb, nl), "z.zip", nl=nl)], "IN2", nl)
    raw = top(
        mp(
            "mixed",
            [inner, att("application/pdf", b64(pdf, nl), "r.pdf", nl=nl), nested],
            "OUT",
            nl,
            pre=f"preamble{nl}--OUTx not a boundary{nl}",
            epi=f"epilogue{nl}--OUT{nl}",
        ),
        nl,
    )
    pm = assert_same_as_slow(raw)
    assert [(a.filename, a.data) for a in pm.attachments] == [("i.png", png), ("r.pdf", pdf), ("z.zip", zipb)]
    assert pm.text == "plain body" and placeholders(pm) == 3
    assert [a.source is not None for a in parse_mail(raw, stream_large=True).attachments] == [True, True, True]
    assert pm.message.get_content_type() == "multipart/mixed"  # the tree is still there for classify


@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_big_quoted_printable_and_8bit_bodies(nl: str) -> None:
    text = "".join(f"line {i} caf\u00e9 = {'x' * (i % 90)}\n" for i in range(3000))
    qp = __import__("quopri").encodestring(text.encode()).decode().replace("\n", nl)
    binary = bytes(b % 256 for b in rnd(200_000, 4)).replace(b"\n--B", b"\n-xB")  # bare CRs, NULs, ...
    raw = top(
        mp(
            "mixed",
            [
                "Content-Type: text/plain\n\nbody".replace("\n", nl),
                att("application/octet-stream", qp, "q.txt.bin", cte="quoted-printable", nl=nl),
                att("application/octet-stream", "@@BIN@@", "raw.bin", cte="8bit", nl=nl),
                att("application/octet-stream", "@@BIN@@", "seven.bin", cte="7bit", nl=nl),
                att("application/x-thing", "@@BIN@@", "b.bin", cte="binary", nl=nl),
            ],
            "B",
            nl,
        ),
        nl,
    ).replace(b"@@BIN@@", binary.replace(b"\r", b"\r" + b"x"))
    pm = assert_same_as_slow(raw)
    assert pm.attachments[0].data == text.replace("\n", nl).encode()
    assert placeholders(pm) == 4


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s,  # clean
        lambda s: s.rstrip().rstrip("="),  # missing padding
        lambda s: s.rstrip() + "==\n",  # excess padding
        lambda s: s[:5000] + "!*~" + s[5000:],  # junk characters
        lambda s: s[:40000] + "=\n" + s[40000:],  # '=' in the middle
        lambda s: s.rstrip("\n=") + "A\n",  # one character too many: not decodable as is
        lambda s: "QUJD\n" + "=" * 3 + "\n" + s,  # padding at the start
        lambda s: s.replace("\n", " \t\n"),  # trailing blanks
    ],
)
def test_big_bad_base64_same_as_slow_path(mangle) -> None:
    raw = top(
        mp(
            "mixed",
            ["Content-Type: text/plain\n\nb", att("application/pdf", mangle(b64(rnd(100_001, 5))), "x.pdf")],
            "B",
        )
    )
    assert_same_as_slow(raw)


@pytest.mark.parametrize("trailing", ["\n", "", "\r\n", "\n\n\n"])
def test_big_missing_close_boundary(trailing: str) -> None:
    data = rnd(150_000, 6)
    raw = top(
        mp(
            "mixed",
            ["Content-Type: text/plain\n\nb", att("application/pdf", b64(data).rstrip("\n") + trailing, "x.pdf")],
            "B",
            close=False,
        )[:-1]
    )
    pm = assert_same_as_slow(raw)
    assert pm.attachments[0].data == data
    assert any("CloseBoundaryNotFound" in d for d in pm.defects)


def test_big_boundary_text_inside_body_not_at_line_start() -> None:
    enc = b64(rnd(120_000, 8))
    # "--B" inside lines, "--B" + more text at a line start, "--Bx": none of them is a boundary line
    enc = enc[:1000] + "--B--B\n" + enc[1000:50000] + "\nx--B\n--Bx\n--B-- x\n" + enc[50000:]
    binary = "abc--B\r--Bxyz\n" * 8000 + "\r--B \t\n"  # ... but "\r--B \t" ends the part (a bare CR ends a line)
    raw = top(
        mp(
            "mixed",
            [
                att("application/pdf", enc, "x.pdf"),
                att("application/octet-stream", binary, "y.bin", cte="8bit"),
                "Content-Type: text/plain\n\nafter",
            ],
            "B",
        )
    )
    pm = assert_same_as_slow(raw)
    assert [a.filename for a in pm.attachments][:2] == ["x.pdf", "y.bin"]


def test_big_outer_boundary_ends_unclosed_inner_multipart() -> None:
    data = rnd(100_000, 9)
    inner = mp("mixed", [att("application/pdf", b64(data), "in.pdf")], "INNER", close=False)
    raw = top(
        mp(
            "mixed",
            ["Content-Type: text/plain\n\nbody", inner, att("image/gif", b64(rnd(80_000, 10)), "g.gif")],
            "OUTER",
        )
    )
    pm = assert_same_as_slow(raw)
    assert pm.attachments[0].data == data and placeholders(pm) == 2


def test_big_bodies_in_message_rfc822_text_and_root() -> None:
    data = rnd(100_000, 11)
    fwd = "From: x@example.com\nSubject: fwd\n" + mp(
        "mixed", ["Content-Type: text/plain\n\ninner", att("application/pdf", b64(data), "in.pdf")], "IN"
    )
    big_text = "log line\n" * 20_000
    raw = top(
        mp(
            "mixed",
            [
                "Content-Type: text/plain\n\n" + big_text,
                "Content-Type: message/rfc822\n\n" + fwd,
                att("text/plain", big_text, "server.log", cte="8bit"),
            ],
            "B",
        )
    )
    pm = assert_same_as_slow(raw, fast=False)  # text and forwarded messages keep their payloads in the tree
    assert pm.attachments[0].filename == "fwd.eml" and b64(data).encode()[:1000] in pm.attachments[0].data
    root = top(f"Content-Type: application/pdf; name=r.pdf\nContent-Transfer-Encoding: base64\n\n{b64(data)}")
    pm = assert_same_as_slow(root)
    assert [(a.filename, a.data) for a in pm.attachments] == [("r.pdf", data)]


def test_big_odd_structures_same_as_slow_path() -> None:
    data = b64(rnd(70_000, 12))
    cases = [
        # digest: parts default to message/rfc822
        top(mp("digest", ["\nFrom: a@example.com\n\nhi", att("application/pdf", data, "d.pdf")], "D")),
        # a part without the blank line after its headers: the stdlib reads the body from the first non-header line
        top(mp("mixed", [f"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n{data}"], "B")),
        # consecutive boundary lines, close boundary swallowed by them, whitespace after boundaries
        top(
            mp(
                "mixed", [att("application/pdf", data, "a.pdf"), "", att("application/pdf", data, "b.pdf")], "B"
            ).replace("--B\n\n--B\n", "--B \t\n--B--\n--B\n")
        ),
        # the declared boundary never occurs; no boundary at all
        top('Content-Type: multipart/mixed; boundary="nothere"\n\n' + data),
        top("Content-Type: multipart/mixed\n\n" + data),
        # CR-only line endings
        top(mp("mixed", [att("application/pdf", data, "a.pdf")], "B")).replace(b"\n", b"\r"),
        # boundary with regex characters and RFC 2231 / quoting
        top(mp("mixed", [att("application/pdf", data, "a.pdf")], "a.b*c+(d)?")),
        top(mp("mixed", [att("application/pdf", data, "a.pdf")], "Q")).replace(b'boundary="Q"', b"boundary*=''Q"),
        # an mbox From line and a last header line starting with "From "
        b"From alice Sat Jan  3 01:05:34 1996\n"
        + top(mp("mixed", [att("application/pdf", data, "a.pdf", extra="From nobody\n")], "B")),
    ]
    for raw in cases:
        pm = parse_mail(raw)
        assert fields(pm) == fields(slow_parse(raw)), raw[:300]


@pytest.mark.parametrize("seed", range(60))
def test_mutated_big_mails_same_as_slow_path(seed: int) -> None:
    """Random damage to a structured mail; with every body counted as large, both paths agree."""
    rng = random.Random(seed)
    nl = rng.choice(["\n", "\r\n"])
    raw = bytearray(
        top(
            mp(
                "mixed",
                [
                    "Content-Type: text/plain\n\nbody".replace("\n", nl),
                    mp(
                        "alternative",
                        [
                            f"Content-Type: text/plain{nl}{nl}p",
                            att("application/pdf", b64(rnd(900, seed), nl), "a.pdf", nl=nl),
                        ],
                        "ALT",
                        nl,
                    ),
                    att(
                        "image/png",
                        b64(rnd(700, seed + 1), nl),
                        "i.png",
                        nl=nl,
                        cte=rng.choice(["base64", "quoted-printable", "8bit"]),
                    ),
                    "Content-Type: message/rfc822" + nl + nl + "Subject: in" + nl + nl + "x",
                ],
                "OUT",
                nl,
                pre="pre" + nl,
            ),
            nl,
        )
    )
    for _ in range(rng.randint(1, 12)):
        pos = rng.randrange(len(raw))
        op = rng.random()
        if op < 0.3:
            raw[pos] = rng.randrange(256)
        elif op < 0.5:
            del raw[pos : pos + rng.randint(1, 30)]
        else:
            raw[pos:pos] = rng.choice(
                [b"\n", b"\r", nl.encode(), b"--OUT\n", b"--ALT--\n", b"\n--OUT--", b"=", b"!", b"\n\n"]
            )
    mangled = bytes(raw)
    args: dict[str, Any] = {"max_depth": 50, "max_parts": 1000, "max_header_bytes": 1_000_000}
    try:
        expected = fields(slow_parse(mangled))
    except MailParseError as exc:
        with pytest.raises(MailParseError, match=re.escape(exc.reason)):
            _mime._parse(mangled, big_min=1, **args)
        return
    assert fields(_mime._parse(mangled, big_min=1, **args)) == expected
    assert fields(streamed(_mime._parse(mangled, big_min=1, stream_large=True, **args))) == expected


def test_24mb_mail_memory_bound() -> None:
    """Measured: peak ~20 MiB of Python allocations in parse_mail for this 24.3 MB mail (0.8x its size;
    the decoded 18 MiB attachment is most of it); the plain stdlib path peaks at ~188 MiB (7.7x)."""
    import os
    import tracemalloc

    from tests.mails import make_mail

    data = os.urandom(18 * 2**20)
    raw = make_mail(attachments=[("big.bin", "application/octet-stream", data)])
    tracemalloc.start()
    try:
        t0 = time.process_time()
        pm = parse_mail(raw)
        cpu = time.process_time() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(a.filename, a.content_type, a.data == data) for a in pm.attachments] == [
        ("big.bin", "application/octet-stream", True)
    ]
    assert pm.text == "The printer is on fire.\n"
    assert peak < 4 * len(raw), f"peak {peak / 2**20:.1f} MiB for a {len(raw) / 2**20:.1f} MiB mail"
    assert cpu < 2.0


def test_b64_region_matches_lenient_decoder() -> None:
    """The copy-free base64 decoder gives the same bytes and the same 'clean' verdict as _b64_lenient."""
    rng = random.Random(99)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for _ in range(3000):
        n = rng.randrange(0, 40)
        body = bytearray(rng.choice(alphabet) for _ in range(n))
        for _ in range(rng.randrange(0, 4)):
            body.insert(rng.randrange(len(body) + 1), rng.choice(b"= \n\r\t=!-."))
        body += rng.choice([b"", b"=", b"==", b"===", b"\n", b"=\n", b"= =\n"])
        raw = b"xx" + bytes(body) + b"yy"
        assert _mime._b64_region(raw, 2, len(raw) - 2) == _mime._b64_lenient(bytes(body)), bytes(body)


def test_streamed_bodies_decode_as_the_whole() -> None:
    """A large body decoded a piece at a time (Encoded.chunks, any piece size) gives the bytes and the note that
    decoding it whole gives (_region_bytes), for base64 however damaged, quoted-printable and bodies as they are;
    base64 with an '=' far from its end is not streamed (None: decoded whole)."""
    rng = random.Random(14)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    qp_bytes = b"abc =\r\n\t09AFaf=_"
    headers = {"base64": "Content-Transfer-Encoding: base64\n", "quoted-printable":
               "Content-Transfer-Encoding: quoted-printable\n", "": "Content-Transfer-Encoding: 8bit\n"}
    not_streamed = 0
    for i in range(4000):
        cte = ("base64", "quoted-printable", "")[i % 3]
        n = rng.randrange(0, 300)
        if cte == "base64":
            body = bytearray(rng.choice(alphabet) for _ in range(n))
            for _ in range(rng.randrange(0, 5)):
                body.insert(rng.randrange(len(body) + 1), rng.choice(b"= \n\r\t=!-."))
            body += rng.choice([b"", b"=", b"==", b"===", b"\n", b"=\n", b"= =\n", b"A=", b"AB=\nC"])
        elif cte == "quoted-printable":
            body = bytearray(rng.choice(qp_bytes) for _ in range(n))
        else:
            body = bytearray(rng.randbytes(n))
        raw = b"xx" + bytes(body) + b"yy"
        part = _mime.Message()
        for line in headers[cte].splitlines():
            name, value = line.split(": ")
            part[name] = value
        whole_notes: list[str] = []
        whole = _mime._region_bytes(part, raw, 2, len(raw) - 2, whole_notes)
        notes: list[str] = []
        source = _mime._encoded(part, raw, 2, len(raw) - 2, notes)
        if source is None:
            assert cte == "base64" and len(raw) - 2 - raw.find(b"=") > _mime._B64_TAIL
            not_streamed += 1
            continue
        assert notes == whole_notes, bytes(body)
        for size in (1, 2, 3, 5, 7, 64, 1 << 20):
            assert b"".join(source.chunks(size)) == whole, (cte, bytes(body), size)
    assert not_streamed == 0  # bodies of 300 bytes: every one streamed


def test_streamed_base64_with_an_early_pad_is_decoded_whole() -> None:
    """An '=' far from the end of a large base64 body (chunks glued together): not streamed, as decoded before."""
    data = rnd(200_000, 8)
    body = b64(rnd(301, 9)) + b64(data)  # 301 bytes: its base64 ends with "=="
    raw = top(mp("mixed", ["Content-Type: text/plain\n\nb", att("application/pdf", body, "x.pdf")], "B"))
    pm = parse_mail(raw, stream_large=True)
    assert [(a.source, a.data) for a in pm.attachments] == [(None, parse_mail(raw).attachments[0].data)]


def test_streamed_large_mail_holds_no_decoded_copy() -> None:
    """stream_large: a 24 MB mail's 18 MiB attachment is not decoded while parsing, and decoding it a piece at a
    time holds about one piece: the peak of Python allocations is a small part of the mail's size."""
    import os
    import tracemalloc

    from tests.mails import make_mail

    data = os.urandom(18 * 2**20)
    raw = make_mail(attachments=[("big.bin", "application/octet-stream", data)])
    tracemalloc.start()
    try:
        pm = parse_mail(raw, stream_large=True)
        digest = __import__("hashlib").sha256()
        for chunk in pm.attachments[0].source.chunks():
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == __import__("hashlib").sha256(data).digest()
    assert pm.attachments[0].data == b""
    assert peak < len(raw) // 4, f"peak {peak / 2**20:.1f} MiB for a {len(raw) / 2**20:.1f} MiB mail"


@pytest.mark.parametrize("charset", [None, "utf-8", "UTF8", "us-ascii", "iso-8859-1", "utf-16", "utf-7", "x-bogus"])
def test_an_ascii_body_taken_as_it_is_reads_as_decoded(monkeypatch, charset) -> None:
    """_ascii_body (an ASCII payload in an ASCII-reading charset is its own text) changes nothing: the same
    fields and notes as decoding its bytes, for every transfer encoding and charset, in a mail of any size."""
    bodies = ["plain line\r\nsecond =3D line\r\n", "nul \x00 inside\n", "caf\u00e9 not ascii\n", "+AGEA- seven\n",
              "<p>html</p>\r\n" * 3, "x" * 70_000 + "\n"]  # the last one large: kept out of the stdlib parser
    mails = []
    for body in bodies:
        for cte in [None, "7bit", "8bit", "binary", "quoted-printable", "base64", "x-uuencode"]:
            for ctype in ["text/plain", "text/html"]:
                head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "") + "\n"
                head += f"Content-Transfer-Encoding: {cte}\n" if cte else ""
                data = body.encode("utf-8")
                if cte == "base64":
                    data = base64.encodebytes(data)
                mails.append(mail(head, data))
                alt = mp("alternative", [f"Content-Type: {ctype}\n" + head.split("\n", 1)[1] + "\n" + body,
                                         "Content-Type: text/plain\n\nother"], "ALT")
                mails.append(top(alt))
    assert len(mails) == 2 * 2 * 7 * len(bodies)
    got = [fields(parse_mail(raw)) for raw in mails]
    slow = [fields(slow_parse(raw)) for raw in mails]
    monkeypatch.setattr(_mime, "_ascii_body", lambda part, charset: None)
    assert got == [fields(parse_mail(raw)) for raw in mails]
    assert slow == [fields(slow_parse(raw)) for raw in mails]
