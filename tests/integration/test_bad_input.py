"""Bad input: every case ends stored with a clear outcome (never a traceback, never lost)."""

from __future__ import annotations

import base64
import time

import pytest
from sqlalchemy import select

from gateway.intake import Envelope
from gateway.models import Attachment, InboundMail, Ticket

ENV = Envelope(mail_from="x@customer.example", rcpt_tos=("support@example.com",), source="smtp")

HDR = b"From: Alice <alice@customer.example>\r\nTo: support@example.com\r\nMessage-ID: <%s@c.example>\r\n"


def mail(tag: str, rest: bytes) -> bytes:
    return HDR % tag.encode() + rest


def deep(levels: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return mail("deep", b"Subject: deep\r\nMIME-Version: 1.0\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi" + tail)


def wide(parts: int) -> bytes:
    body = b"".join(b"--w\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(parts))
    return mail("wide", b'Subject: wide\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="w"\r\n\r\n'
                + body + b"--w--\r\n")


def att(name: bytes, data: bytes = b"payload") -> bytes:
    return mail("att" + str(abs(hash(name))), b'Subject: attachment\r\nMIME-Version: 1.0\r\n'
                b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n'
                b"--a\r\nContent-Type: text/plain\r\n\r\nsee file\r\n"
                b'--a\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="' + name
                + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + base64.b64encode(data) + b"\r\n--a--\r\n")


CASES = {
    "not an email": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, {"quarantined"}),
    "empty": (b"", {"quarantined"}),
    "no From": (b"To: support@example.com\r\nSubject: who am I\r\nMessage-ID: <nofrom@c.example>\r\n\r\nbody", None),
    "no Message-ID": (b"From: alice@customer.example\r\nTo: support@example.com\r\nSubject: no id\r\n\r\nbody",
                      {"ticket"}),
    "two From addresses": (b"From: a@customer.example, b@customer.example\r\nTo: support@example.com\r\n"
                           b"Subject: two\r\n\r\nbody", {"quarantined"}),
    "double at": (b"From: a@evil.example@corp.example\r\nTo: support@example.com\r\nSubject: at\r\n\r\nbody",
                  {"quarantined"}),
    "unknown charset": (mail("cs1", b"Subject: cs\r\nContent-Type: text/plain; charset=x-unknown-42\r\n\r\nbody \xe9"),
                        {"ticket"}),
    "wrong charset": (mail("cs2", b"Subject: cs\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf\xe9 cr\xe8me"),
                      {"ticket"}),
    "8-bit header": (mail("h8", b"Subject: Gr\xc3\xbc\xdfe caf\xe9\r\n\r\nbody"), {"ticket"}),
    "missing boundary": (mail("nob", b"Subject: nb\r\nContent-Type: multipart/mixed\r\n\r\nno parts here"), {"ticket"}),
    "bad base64": (mail("b64", b"Subject: b64\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   b"SGVsbG8@@@!!!===d29ybGQ"), {"ticket"}),
    "1 MB To header": (b"From: alice@customer.example\r\nTo: " + b", ".join(b"u%d@x.example" % i for i in range(70000))
                       + b"\r\nSubject: big to\r\nMessage-ID: <bigto@c.example>\r\n\r\nbody", {"ticket"}),
    "long lines": (mail("ll", b"Subject: " + b"s" * 3000 + b"\r\n\r\n" + b"x" * 50000 + b"\r\n"), {"ticket"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_stored_with_a_clear_outcome(app, name):
    raw, expected = CASES[name]
    r = app.intake().ingest(raw, ENV)
    assert r.outcome in (expected or {"ticket", "quarantined"})
    if r.outcome == "quarantined":
        assert r.reason and "Traceback" not in r.reason
    with app.sessions() as s:
        m = s.get(InboundMail, r.mail_id)
        assert m.raw.data == raw  # nothing lost: the raw bytes are kept
        assert m.outcome == r.outcome


def test_no_from_uses_the_envelope_sender_and_says_so(app):
    r = app.intake().ingest(CASES["no From"][0], ENV)
    assert r.outcome == "ticket"
    assert any("envelope sender" in line for line in r.trace)


def test_no_from_and_no_envelope_is_quarantined(app):
    r = app.intake().ingest(CASES["no From"][0], Envelope(source="stdin"))
    assert r.outcome == "quarantined" and "no From" in r.reason


@pytest.mark.parametrize("raw,label", [(deep(2000), "2,000-level nesting"), (wide(50000), "50,000 parts")])
def test_hostile_structure_is_cheap(app, raw, label):
    t0 = time.process_time()
    r = app.intake().ingest(raw, ENV)
    cpu = time.process_time() - t0
    assert r.outcome in ("quarantined", "ticket"), label
    assert r.outcome != "quarantined" or r.reason
    assert cpu < 2.0, f"{label}: {cpu:.2f} s CPU"


@pytest.mark.parametrize("name", [b"../../etc/passwd", b"/etc/passwd", b"..\\\\x", b"nul\\x00.txt",
                                  "evil\u202etxt.exe".encode(), b"a" * 300 + b".pdf"])
def test_hostile_attachment_names(app, name):
    r = app.intake().ingest(att(name), ENV)
    assert r.outcome == "ticket"
    with app.sessions() as s:
        a = s.scalar(select(Attachment))
        assert "/" not in a.filename and "\\" not in a.filename and "\x00" not in a.filename
        assert "\u202e" not in a.filename and not a.filename.startswith(".")
        assert len(a.filename.encode()) <= 255 and a.filename
        stored = app.blobs.path_for(a.sha256)
        assert stored.is_file() and stored.parent.parent.parent == app.config.attachments_dir


def test_same_mail_twice_makes_one_ticket(app):
    raw = CASES["no Message-ID"][0]
    assert app.intake().ingest(raw, ENV).outcome == "ticket"
    assert app.intake().ingest(raw, ENV).outcome == "duplicate"
    with app.sessions() as s:
        assert len(s.scalars(select(Ticket)).all()) == 1
