"""Issue 16, class 5: attached messages, uuencode, small HTML parts, TNEF winmail.dat (mails made here)."""

from __future__ import annotations

import base64
import binascii
import struct

import pytest

from gateway import parts
from gateway.mime import parse_mail

HEAD = b"From: Carla <carla@customer.example>\nTo: support@example.com\nSubject: Files\nMIME-Version: 1.0\n"


def _multipart(*bodies: bytes) -> bytes:
    out = HEAD + b'Content-Type: multipart/mixed; boundary="b"\n\n'
    for body in bodies:
        out += b"--b\n" + body + b"\n"
    return out + b"--b--\n"


TEXT = b"Content-Type: text/plain\n\nPlease see the attached file.\n"
INNER = b"From: bob@example.org\nSubject: The original offer\n\nOffer text.\n"


def test_an_attached_message_keeps_the_name_given_by_name() -> None:
    p = parse_mail(_multipart(TEXT, b'Content-Type: message/rfc822; name="offer-2026.eml"\n\n' + INNER))
    assert [a.filename for a in p.attachments] == ["offer-2026.eml"]
    assert p.attachments[0].data.endswith(b"Offer text.\n")


def test_an_attached_message_without_a_name_is_named_after_its_subject() -> None:
    p = parse_mail(_multipart(TEXT, b"Content-Type: message/rfc822\n\n" + INNER))
    assert [a.filename for a in p.attachments] == ["The original offer.eml"]


def _uu(name: str, data: bytes) -> str:
    lines = [binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45)]
    return f"begin 644 {name}\n" + "".join(lines) + "`\nend\n"


def test_a_uuencoded_block_in_the_body_becomes_an_attachment() -> None:
    data = bytes(range(256)) * 3
    body = "Hello,\n\nthe log is below.\n\n" + _uu("server log.bin", data) + "\nRegards, Carla\n"
    p = parse_mail(HEAD + b"Content-Type: text/plain\n\n" + body.encode())
    assert [(a.filename, a.data) for a in p.attachments] == [("server log.bin", data)]
    assert "begin 644" not in p.text and "end\n" not in p.text.split("log is below.")[1][:5]
    assert p.text.startswith("Hello,\n\nthe log is below.") and p.text.rstrip().endswith("Regards, Carla")


def test_an_x_uuencode_part_is_a_file_not_the_body() -> None:
    payload = _uu("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100).encode()
    p = parse_mail(_multipart(TEXT, b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: x-uuencode\n\n"
                              + payload))
    assert p.text.strip() == "Please see the attached file."
    assert [(a.filename, a.data[:8]) for a in p.attachments] == [("photo.png", b"\x89PNG\r\n\x1a\n")]


def test_text_that_only_looks_like_uuencode_stays() -> None:
    body = "begin 644 is how the block starts,\nand this is not one.\nend\n"
    p = parse_mail(HEAD + b"Content-Type: text/plain\n\n" + body.encode())
    assert p.text == body and not p.attachments


def test_a_small_html_part_outside_the_body_is_dropped() -> None:
    footer = b"Content-Type: text/html\n\n<p>This mail was scanned by Virus Guard.</p>\n"
    p = parse_mail(_multipart(TEXT, b"Content-Type: application/pdf; name=a.pdf\n\n%PDF-1.4\n", footer))
    assert [a.filename for a in p.attachments] == ["a.pdf"]
    assert any("small text/html part" in d for d in p.defects)


def test_a_named_or_large_html_part_stays_an_attachment() -> None:
    named = b'Content-Type: text/html\nContent-Disposition: attachment; filename="invoice.html"\n\n<p>Invoice</p>\n'
    large = b"Content-Type: text/html\n\n<p>" + b"row " * 2000 + b"</p>\n"
    p = parse_mail(_multipart(TEXT, b"Content-Type: application/pdf; name=a.pdf\n\n%PDF-1.4\n", named, large))
    assert [a.filename for a in p.attachments] == ["a.pdf", "invoice.html", "attachment-3.html"]


def _tnef_object(level: int, attr: int, atype: int, data: bytes) -> bytes:
    return struct.pack("<BHHI", level, attr, atype, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def make_tnef(files: list[tuple[str, bytes]]) -> bytes:
    """A TNEF stream as Outlook writes one: the signature, a key, the version, then per file its rendering data,
    title (the file name) and data attributes."""
    out = struct.pack("<IH", 0x223E9F78, 0x0101)
    out += _tnef_object(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))  # attTnefVersion
    for name, data in files:
        out += _tnef_object(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff\x0c\x00\x0c\x00\x00\x00\x00\x00")
        out += _tnef_object(2, 0x8010, 0x0001, name.encode() + b"\x00")
        out += _tnef_object(2, 0x800F, 0x0006, data)
    return out


def test_winmail_dat_is_kept_and_its_files_extracted() -> None:
    files = [("quote.pdf", b"%PDF-1.4 quote"), ("notes.txt", b"call back on Monday\n")]
    tnef = make_tnef(files)
    part = (b'Content-Type: application/ms-tnef; name="winmail.dat"\nContent-Transfer-Encoding: base64\n'
            b'Content-Disposition: attachment; filename="winmail.dat"\n\n' + base64.encodebytes(tnef))
    p = parse_mail(_multipart(TEXT, part))
    got = [(a.filename, a.content_type, a.data) for a in p.attachments]
    assert got == [("winmail.dat", "application/ms-tnef", tnef), ("quote.pdf", "application/pdf", files[0][1]),
                   ("notes.txt", "text/plain", files[1][1])]


@pytest.mark.parametrize("data", [b"\x78\x9f\x3e\x22\x01", b"\x78\x9f\x3e\x22" + b"\xff" * 64, b"not tnef at all"])
def test_a_broken_tnef_stream_stays_one_opaque_file(data: bytes) -> None:
    assert parts.tnef_files(data) == []
    part = b'Content-Type: application/vnd.ms-tnef; name="winmail.dat"\nContent-Transfer-Encoding: base64\n\n'
    p = parse_mail(_multipart(TEXT, part + base64.encodebytes(data)))
    assert [(a.filename, a.data) for a in p.attachments] == [("winmail.dat", data)]


def test_the_number_of_files_taken_out_is_bounded() -> None:
    body = "".join(_uu(f"f{i}.bin", b"x") for i in range(parts.MAX_FILES + 5))
    text, files = parts.split_uuencoded(body)
    assert len(files) == parts.MAX_FILES
