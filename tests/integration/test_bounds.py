"""Complexity bombs (issue 12 point 4) through SMTP and through `ingest`: each is a ticket from its sender with
what can be read, and the bound it hit is in the decision trace. Asserted by outcome and counts (the times are
in bench/bench_hostile.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_config
from servehelp import Running, config_for, send
from sqlalchemy import select

from gateway.app import build_app
from gateway.config import load
from gateway.models import Attachment, InboundMail, Ticket


def _head(i: int, extra: str = "") -> str:
    return (f"From: Bomber <bomber{i}@evil.example>\r\nTo: support@example.com\r\nSubject: bomb {i}\r\n"
            f"Message-ID: <bomb{i}@evil.example>\r\nDate: Mon, 02 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            + extra)


def _cc(i: int) -> bytes:
    cc = ",\r\n ".join(f"Person {k} <person{k}@victims.example>" for k in range(40000))
    return (_head(i, f"Cc: {cc}\r\n") + "\r\nforty thousand in Cc\r\n").encode()


def _references(i: int) -> bytes:
    refs = "\r\n ".join(f"<ref{k}@threads.example>" for k in range(20000))
    return (_head(i, f"References: {refs}\r\n") + "\r\nlong thread\r\n").encode()


def _divs(i: int) -> bytes:
    html = "<div>" * 20000 + "deep text" + "</div>" * 20000
    return (_head(i, "Content-Type: text/html; charset=utf-8\r\n") + "\r\n" + html + "\r\n").encode()


def _rfc2231(i: int) -> bytes:
    params = ";\r\n ".join(f"filename*{k}*=p{k}" if k else "filename*0*=utf-8''p0" for k in range(3000))
    return (_head(i, 'Content-Type: multipart/mixed; boundary="b"\r\n')
            + "\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--b\r\n"
            + "Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n " + params + "\r\n"
            + "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n").encode()


def _html_size(i: int) -> bytes:
    body = ("<p>" + "word " * 200 + "</p>\r\n") * 2500  # 2.5 MB of HTML
    return (_head(i, "Content-Type: text/html; charset=utf-8\r\n") + "\r\n" + body).encode()


def _headers(i: int) -> bytes:
    junk = "".join(f"X-Junk-{k}: value {k}\r\n" for k in range(20000))
    return (_head(i, junk) + "\r\nmany header fields\r\n").encode()


def _parts(i: int) -> bytes:
    parts = "".join(f'--b\r\nContent-Type: text/plain; name="p{k}.txt"\r\nContent-Disposition: attachment\r\n\r\n'
                    f"part {k}\r\n" for k in range(120))
    return (_head(i, 'Content-Type: multipart/mixed; boundary="b"\r\n') + "\r\n" + parts + "--b--\r\n").encode()


BOMBS = [
    (_cc, "Cc has more than 1000 addresses: only the first 1000 read"),
    (_references, "References has 20000 Message-IDs: only the first and the last 99 read"),
    (_divs, "nests elements more than 500 deep: read as text without its tags"),
    (_rfc2231, "a MIME header has more than 200 parameters: the rest not read"),
    (_html_size, "only the first 2000000 read (bound MAX_HTML_CHARS)"),
    (_headers, "the header has 20006 fields: only the first and the last 500 read"),
    (_parts, "120 attachments: only the first 100 kept, the rest stay in the original mail"),
]


def _check(app) -> None:
    with app.sessions() as s:
        mails = {m.message_id: m for m in s.scalars(select(InboundMail))}
        for i, (_make, bound) in enumerate(BOMBS):
            m = mails[f"bomb{i}@evil.example"]
            assert (m.outcome, m.sender) == ("ticket", f"bomber{i}@evil.example"), (i, m.outcome, m.reason)
            assert any(bound in line for line in m.trace), (i, m.trace)
            t = s.scalar(select(Ticket).where(Ticket.source_mail_id == m.id))
            assert t is not None
            if i == 0:  # the sender's ticket, the first ten Cc as (silent) watchers
                assert sorted(w.contact.email for w in t.watchers) == sorted(f"person{k}@victims.example"
                                                                              for k in range(10))
            elif i == 2:
                assert "deep text" in t.description
            elif i == 3:
                (a,) = s.scalars(select(Attachment).where(Attachment.ticket_id == t.id))
                assert a.filename.startswith("p0p1p2") and len(a.filename) <= 255
            elif i == 4:
                assert t.description.startswith("word word")
            elif i == 5:
                assert t.subject == "bomb 5" and t.description == "many header fields"
            elif i == 6:
                names = sorted(a.filename for a in s.scalars(select(Attachment).where(Attachment.ticket_id == t.id)))
                assert len(names) == 100 and "p0.txt" in names and "p99.txt" in names and "p100.txt" not in names


@pytest.mark.parametrize("lmtp", [False], ids=["smtp"])
def test_bombs_through_smtp(tmp_path, sqlite_url, lmtp):
    r = Running(config_for(tmp_path, sqlite_url))
    try:
        port = r.port("smtp")
        for i, (make, _bound) in enumerate(BOMBS):
            assert send(port, make(i), f"bomber{i}@evil.example")[0] == 250
        r.wait_processed(len(BOMBS), timeout=60)
        _check(r.app)
    finally:
        r.stop()


def test_bombs_through_ingest(tmp_path, sqlite_url):
    cfg = write_config(tmp_path, sqlite_url)
    d: Path = tmp_path / "bombs"
    d.mkdir()
    for i, (make, _bound) in enumerate(BOMBS):
        (d / f"{i}.eml").write_bytes(make(i))
    p = run_cli("ingest", str(d), config=cfg)
    assert p.returncode == 0, p.stderr
    app = build_app(load(cfg))
    try:
        _check(app)
    finally:
        app.close()
    # one mail through stdin too: the trace in the JSON answer says what was cut
    res = json.loads(run_cli("ingest", "--json", config=cfg, input=_cc(9)).stdout)
    assert res["outcome"] == "ticket"
    assert any("Cc has more than 1000 addresses" in line for line in res["trace"])
