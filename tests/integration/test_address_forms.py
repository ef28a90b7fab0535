"""Address tricks (issue 12 point 1, issue 16 class 2) through the real SMTP and LMTP listeners and through
`ingest`: one strict reader for every header that names a person. The victim, a known customer with ticket
#1, is never who an attacker's mail acts as: each form ends as a ticket of the address the standard reading
agrees on (with exactly the watchers named), or quarantined with a reason in plain words. Every figure is an
outcome or a count."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, write_config
from servehelp import Running, config_for, send
from sqlalchemy import select

from gateway.app import build_app
from gateway.config import load
from gateway.models import InboundMail, Ticket

VICTIM = "victim@corp.example"
EVIL = "a@evil.example"
Q = "quarantined"
STD = "by the standard RFC 5322 reading"
MALFORMED = "From address is malformed"

# (id, header lines (a From line is added when none is given), expected)
# expected: ("ticket", sender, watchers) | ("comment", sender, None) | (Q, reason substring, None)
FORMS: list[tuple[str, str, tuple[str, str, frozenset[str] | None]]] = [
    ("quoted-angle", f'From: "{VICTIM} <{VICTIM}>" <{EVIL}>', ("ticket", EVIL, frozenset())),
    ("comment-then-angle", f"From: {VICTIM} ({VICTIM}) <{EVIL}>", (Q, STD, None)),
    ("comment-first", f"From: ({VICTIM}) {EVIL}", ("ticket", EVIL, frozenset())),
    ("angle-in-comment", f"From: {EVIL} (<{VICTIM}>)", ("ticket", EVIL, frozenset())),
    ("nested-comment", f"From: {EVIL} (x (y <{VICTIM}>))", ("ticket", EVIL, frozenset())),
    ("cve-paren-close", f"From: alice@example.org)<{VICTIM}>", (Q, MALFORMED, None)),
    ("cve-paren-open", f"From: {VICTIM}(<{EVIL}>", (Q, MALFORMED, None)),
    ("quoted-address-name", f'From: "{VICTIM}" <{EVIL}>', ("ticket", EVIL, frozenset())),
    ("escaped-quote", f'From: "x\\" <{VICTIM}>" <{EVIL}>', ("ticket", EVIL, frozenset())),
    ("encoded-angle", f"From: =?utf-8?q?=3C{VICTIM}=3E?= <{EVIL}>", ("ticket", EVIL, frozenset())),
    ("encoded-comma", f"From: =?utf-8?q?{VICTIM}=2C?= <{EVIL}>", ("ticket", EVIL, frozenset())),
    ("encoded-only", f"From: =?utf-8?q?{VICTIM}?=", (Q, MALFORMED, None)),
    ("encoded-b64-angle", "From: =?utf-8?b?PHZpY3RpbUBjb3JwLmV4YW1wbGU+?=", (Q, MALFORMED, None)),
    ("group-two", f"From: team: {VICTIM}, {EVIL};", (Q, "From names 2 authors", None)),
    ("group-empty", "From: undisclosed-recipients:;", (Q, "From header is empty", None)),
    ("address-as-name", f"From: {VICTIM} <{EVIL}>", (Q, STD, None)),
    ("address-as-name-rev", f"From: {EVIL} <{VICTIM}>", (Q, STD, None)),
    ("text-after-angle", f"From: <{EVIL}> {VICTIM}", (Q, MALFORMED, None)),
    ("two-authors", f"From: {EVIL}, {VICTIM}", (Q, "From names 2 authors", None)),
    ("two-authors-semicolon", f"From: A <{EVIL}>; V <{VICTIM}>", (Q, "From names 2 authors", None)),
    ("two-from-headers", f"From: {EVIL}\r\nFrom: {VICTIM}", (Q, "the mail has 2 From headers", None)),
    ("two-from-headers-rev", f"From: {VICTIM}\r\nFrom: {EVIL}", (Q, "the mail has 2 From headers", None)),
    ("unterminated-quote", f'From: "unterminated <{VICTIM}>', (Q, MALFORMED, None)),
    ("double-close", f"From: <{VICTIM}>>", (Q, MALFORMED, None)),
    ("double-angle", f"From: <<{VICTIM}>>", (Q, MALFORMED, None)),
    ("two-at", f"From: {VICTIM}@evil.example", (Q, MALFORMED, None)),
    ("quoted-local-part", f'From: "{VICTIM}"@evil.example', ("ticket", f'"{VICTIM}"@evil.example', frozenset())),
    ("two-angles", f"From: x <{EVIL}> <{VICTIM}>", (Q, MALFORMED, None)),
    ("source-route", f"From: <@corp.example:{EVIL}>", ("ticket", EVIL, frozenset())),
    ("words-no-invention", f"From: John Smith {EVIL}", (Q, MALFORMED, None)),
    ("garbage", "From: garbage", (Q, MALFORMED, None)),
    ("unquoted-comma-name", "From: Müller, Hans <hans@de.example>", ("ticket", "hans@de.example", frozenset())),
    ("idn-unicode", "From: Jörg <jörg@bücher.example>", ("ticket", "jörg@bücher.example", frozenset())),
    ("idn-a-label", "From: user@xn--bcher-kva.example", ("ticket", "user@bücher.example", frozenset())),
    ("utf8-local", "From: Ünal <ünal@corp2.example>", ("ticket", "ünal@corp2.example", frozenset())),
    # the victim's own mail, written oddly: still the victim (a comment on #1)
    ("trailing-dot", f"From: Victim <{VICTIM}.>", ("comment", VICTIM, None)),
    ("upper-case", "From: VICTIM@Corp.Example", ("comment", VICTIM, None)),
    ("null-first", f"From: <>, Victim <{VICTIM}>", ("comment", VICTIM, None)),
    # Sender and Reply-To
    ("sender-two", f"From: {EVIL}\r\nSender: x@evil.example, {VICTIM}", (Q, "Sender names 2 authors", None)),
    ("reply-to-conflict", f"From: {EVIL}\r\nReply-To: {VICTIM} <r@evil.example>", (Q, STD, None)),
    ("reply-to-quoted", f'From: {EVIL}\r\nReply-To: "{VICTIM}" <r@evil.example>', ("ticket", EVIL, frozenset())),
    # Cc: the same forms; the victim never becomes a watcher
    ("cc-quoted-angle", f'Cc: "{VICTIM} <{VICTIM}>" <c@evil.example>',
     ("ticket", EVIL, frozenset({"c@evil.example"}))),
    ("cc-comment", f"Cc: ({VICTIM}) c@evil.example", ("ticket", EVIL, frozenset({"c@evil.example"}))),
    ("cc-encoded-comma", f"Cc: =?utf-8?q?{VICTIM}=2C_x?= <c@evil.example>",
     ("ticket", EVIL, frozenset({"c@evil.example"}))),
    ("cc-conflict", f"Cc: {VICTIM} <c@evil.example>", (Q, STD, None)),
    ("cc-group", "Cc: friends: c@evil.example, d@evil.example;",
     ("ticket", EVIL, frozenset({"c@evil.example", "d@evil.example"}))),
    ("cc-cve", f"Cc: alice@example.org)<{VICTIM}>", ("ticket", EVIL, frozenset())),
    ("cc-trailing-dot", "Cc: Carol <carol@partner.example.>", ("ticket", EVIL, frozenset({"carol@partner.example"}))),
]


def _raw(i: int, headers: str) -> bytes:
    if not any(line.lower().startswith("from:") for line in headers.split("\r\n")):
        headers = f"From: Attacker <{EVIL}>\r\n{headers}"
    return (f"{headers}\r\nTo: support@example.com\r\nSubject: Re: [#1] Printer on fire\r\n"
            f"Message-ID: <form{i}@test.example>\r\nDate: Mon, 02 Nov 2026 09:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"form {i}\r\n").encode()


FIRST = (f"From: Victim <{VICTIM}>\r\nTo: support@example.com\r\nSubject: Printer on fire\r\n"
         "Message-ID: <first@corp.example>\r\nDate: Mon, 02 Nov 2026 08:00:00 +0000\r\n\r\nIt burns.\r\n").encode()


def _outcomes(app) -> dict[str, tuple[str, str, frozenset[str] | None]]:
    """Message-ID -> (outcome, sender or reason, watchers of the ticket the mail opened)."""
    out: dict[str, tuple[str, str, frozenset[str] | None]] = {}
    with app.sessions() as s:
        for m in s.scalars(select(InboundMail)):
            assert m.message_id is not None
            if m.outcome == Q:
                out[m.message_id] = (Q, m.reason or "", None)
            elif m.outcome == "ticket":
                t = s.scalar(select(Ticket).where(Ticket.source_mail_id == m.id))
                assert t is not None
                out[m.message_id] = ("ticket", m.sender or "", frozenset(w.contact.email for w in t.watchers))
            else:
                out[m.message_id] = (m.outcome, m.sender or "", None)
    return out


def _check(got: dict[str, tuple[str, str, frozenset[str] | None]]) -> None:
    assert got["first@corp.example"][0] == "ticket"
    wrong = []
    for i, (name, _headers, (outcome, what, watchers)) in enumerate(FORMS):
        o, w, ws = got[f"form{i}@test.example"]
        ok = o == outcome and (what in w if outcome == Q else w == what) and (watchers is None or ws == watchers)
        if not ok:
            wrong.append((name, (o, w, ws)))
    assert not wrong, wrong
    comments = sum(1 for o, _, _ in got.values() if o == "comment")
    assert comments == sum(1 for _, _, e in FORMS if e[0] == "comment") == 3  # only the victim's own forms


def test_there_are_forty_forms_and_more():
    assert len(FORMS) >= 40 and len({f[0] for f in FORMS}) == len(FORMS)


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_address_forms_through_the_listener(tmp_path, sqlite_url, lmtp):
    r = Running(config_for(tmp_path, sqlite_url, limits={"mails_per_sender_per_hour": 1000}))
    try:
        port = r.port("lmtp" if lmtp else "smtp")
        assert send(port, FIRST, VICTIM, lmtp=lmtp)[0] == 250
        r.wait_processed(1)
        for i, (_name, headers, _e) in enumerate(FORMS):
            assert send(port, _raw(i, headers), EVIL, lmtp=lmtp)[0] == 250
        r.wait_processed(len(FORMS) + 1)
        _check(_outcomes(r.app))
    finally:
        r.stop()


def test_address_forms_through_ingest(tmp_path, sqlite_url):
    cfg = write_config(tmp_path, sqlite_url, extra="\n[limits]\nmails_per_sender_per_hour = 1000\n")
    assert run_cli("ingest", config=cfg, input=FIRST).returncode == 0
    d: Path = tmp_path / "forms"
    d.mkdir()
    for i, (_name, headers, _e) in enumerate(FORMS):
        (d / f"{i:03d}.eml").write_bytes(_raw(i, headers))
    p = run_cli("ingest", str(d), config=cfg)
    assert p.returncode == 0, p.stderr
    app = build_app(load(cfg))
    try:
        _check(_outcomes(app))
    finally:
        app.close()


def test_admin_replay_releases_an_ambiguous_sender(make_app):
    """Quarantined for its ambiguous From; an admin's replay reads it as the gateway does (the angle-addr)."""
    from gateway.intake import Envelope

    app = make_app()
    res = app.intake().ingest(_raw(0, f"From: {VICTIM} <{EVIL}>"), Envelope(EVIL, ("support@example.com",), "smtp"))
    assert res.outcome == Q and res.reason is not None and res.reason.startswith("ambiguous sender: ")
    again = app.intake().replay(res.mail_id)
    assert again.outcome == "ticket" and any("released by an admin" in line for line in again.trace)
