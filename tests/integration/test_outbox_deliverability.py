"""Deliverability of the outbox (issue 14.3): List-Unsubscribe on notifications to watchers, by mail (a signed
mailto address, handled by the inbound pipeline) and by RFC 8058 one-click (the HTTP listener); DKIM signatures;
one relay connection for several rounds. `serve` in-process with its SMTP and HTTP listeners on loopback, a
real SMTP sink as the relay."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import smtplib
import subprocess

import dkim
import httpx
from sqlalchemy import select
from test_http_api import gateways
from test_smtp import free_port, make_mail

from gateway.models import Comment, InboundMail, Ticket
from gateway.outbound.sender import SMTPTransport, deliver_due
from gateway.outbound.sink import Sink
from gateway.tickets import Directory, Tickets


def ticket_with_watchers(app, watchers: list[str]) -> int:
    with app.sessions() as s, s.begin():
        d = Directory(s, app.clock)
        t = Tickets(s, clock=app.clock, listeners=[])
        ticket = t.create(subject="Printer on fire", reporter=d.add_contact("rita@customer.example"))
        for w in watchers:
            t.add_watcher(ticket, d.add_contact(w), vouched="added by staff")
        d.add_contact("sam@example.com", name="Sam", staff=True)
        return ticket.number


def staff_comment(app, number: int, body: str) -> None:
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        staff = Directory(s, app.clock).contact("sam@example.com")
        ticket = t.get(number)
        assert staff is not None and ticket is not None
        t.add_comment(ticket, author=staff, author_email=staff.email, body=body, source="cli")


def watching(app, number: int) -> list[str]:
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        return sorted(w.contact.email for w in t.watchers)


def by_recipient(sink: Sink, since: int) -> dict[str, email.message.EmailMessage]:
    out = {}
    for r in sink.received[since:]:
        msg = email.message_from_bytes(r.data, policy=email.policy.default)
        out[r.rcpt_tos[0]] = msg
    return out


def test_watchers_unsubscribe_by_mail_and_by_one_click(tmp_path, sqlite_url):
    http_port = free_port()
    with Sink() as relay, gateways(tmp_path, sqlite_url) as start:
        g = start(http={"listen": f"127.0.0.1:{http_port}"},
                  outbound={"relay_host": "127.0.0.1", "relay_port": relay.port, "relay_security": "none",
                            "unsubscribe_url": f"http://127.0.0.1:{http_port}"})
        number = ticket_with_watchers(g.app, ["wanda@customer.example", "walt@customer.example"])
        staff_comment(g.app, number, "We are on it.\n")
        assert deliver_due(g.app).sent == 3
        got = by_recipient(relay, 0)
        assert "List-Unsubscribe" not in got["rita@customer.example"]  # the reporter is no watcher
        links = {}
        for w in ("wanda@customer.example", "walt@customer.example"):
            header = str(got[w]["List-Unsubscribe"])
            m = re.fullmatch(r"<mailto:(support\+u\d+-[a-z2-7]{24}@example\.com)\?subject=unsubscribe>, "
                             r"<(http://127\.0\.0\.1:\d+/api/v1/unsubscribe/u\d+-[a-z2-7]{24})>", header)
            assert m, header
            assert got[w]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            links[w] = m.groups()
        assert links["wanda@customer.example"][0] != links["walt@customer.example"][0]  # one per watcher

        # by mail: Wanda's client mails the signed address; she leaves, nothing else happens
        mailto = links["wanda@customer.example"][0]
        with smtplib.SMTP("127.0.0.1", g.running.port("smtp"), timeout=20) as c:
            c.sendmail("wanda@customer.example", [mailto],
                       make_mail(sender="wanda@customer.example", to=mailto, subject="unsubscribe", body="\n"))
        mail = g.running.wait_processed(1)[-1]
        assert mail.outcome == "ignored" and "wanda@customer.example no longer watches" in (mail.reason or "")
        assert watching(g.app, number) == ["walt@customer.example"]

        # by one click: a GET (a link scanner) changes nothing; a forged token is refused; the POST unsubscribes
        url = links["walt@customer.example"][1]
        with httpx.Client(timeout=20) as h:
            page = h.get(url)
            assert page.status_code == 200 and "<form method=\"post\"" in page.text
            assert watching(g.app, number) == ["walt@customer.example"]
            forged = url[:-3] + ("aaa" if not url.endswith("aaa") else "bbb")
            assert h.post(forged, data={"List-Unsubscribe": "One-Click"}).status_code == 404
            # another watcher's token does not fit this ticket's other watcher either
            assert h.post(url.replace(f"/u{number}-", f"/u{number + 1}-"),
                          data={"List-Unsubscribe": "One-Click"}).status_code == 404
            assert watching(g.app, number) == ["walt@customer.example"]
            done = h.post(url, data={"List-Unsubscribe": "One-Click"})
            assert done.status_code == 200 and "walt@customer.example" in done.text, done.text
            assert h.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 404  # once only
        assert watching(g.app, number) == []

        before = len(relay.received)
        staff_comment(g.app, number, "Fixed.\n")
        deliver_due(g.app)
        assert sorted(by_recipient(relay, before)) == ["rita@customer.example"]
        with g.app.sessions() as s:  # the unsubscribe mail made no comment
            assert [c.body for c in s.scalars(select(Comment).order_by(Comment.id))] == ["We are on it.\n", "Fixed.\n"]
            assert s.scalar(select(InboundMail.ticket_id).where(InboundMail.id == mail.id)) is not None


def test_dkim_signature_verifies_and_one_connection_serves_several_rounds(tmp_path, sqlite_url):
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    with Sink() as relay, gateways(tmp_path, sqlite_url) as start:
        g = start(outbound={"relay_host": "127.0.0.1", "relay_port": relay.port, "relay_security": "none",
                            "dkim_key_file": str(key), "dkim_selector": "tg2026"})
        number = ticket_with_watchers(g.app, ["wanda@customer.example"])
        transport = SMTPTransport(g.app.config.outbound, g.app.config.base_dir)
        try:
            staff_comment(g.app, number, "First.\n")
            assert deliver_due(g.app, transport=transport).sent == 2
            staff_comment(g.app, number, "Second.\n")
            assert deliver_due(g.app, transport=transport).sent == 2
        finally:
            transport.close()
    assert len(relay.received) == 4
    assert len({r.peer for r in relay.received}) == 1  # one connection for both rounds

    asked: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return record if name == b"tg2026._domainkey.example.com." else b""

    for r in relay.received:
        assert r.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(r.data, dnsfunc=dns), r.data[:600]
        sig = r.data.split(b"\r\n\r\n")[0].decode()
        signed = re.search(r"h=([^;]+);", sig.replace("\r\n", "").replace(" ", "")).group(1).lower().split(":")
        assert {"from", "to", "subject", "date", "message-id"} <= set(signed)
        if "List-Unsubscribe" in sig:
            assert {"list-unsubscribe"} <= set(signed)
        tampered = r.data.replace(b"First.", b"Fir5t.").replace(b"Second.", b"5econd.")
        assert not dkim.verify(tampered, dnsfunc=dns)
    assert set(asked) == {b"tg2026._domainkey.example.com."}


def test_a_wrong_dkim_key_stops_the_start(tmp_path, sqlite_url):
    from conftest import run_cli, write_config

    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
    cfg = write_config(tmp_path, sqlite_url, extra=f'\n[outbound]\ndkim_key_file = "{bad}"\n'
                                                    'dkim_selector = "s1"\n')
    p = run_cli("check-config", config=cfg)
    assert p.returncode != 0 and b"not a usable DKIM private key" in p.stdout + p.stderr, p.stdout + p.stderr
    half = write_config(tmp_path, sqlite_url, extra=f'\n[outbound]\ndkim_key_file = "{bad}"\n')
    p = run_cli("check-config", config=half)
    assert p.returncode != 0 and b"dkim_selector" in p.stdout + p.stderr


def test_copies_share_a_rendering_only_where_the_templates_see_the_same(tmp_path, sqlite_url):
    from gateway.outbound import notifier_of

    with Sink() as relay, gateways(tmp_path, sqlite_url) as start:
        g = start(outbound={"relay_host": "127.0.0.1", "relay_port": relay.port, "relay_security": "none"})
        number = ticket_with_watchers(g.app, ["wanda@customer.example", "walt@customer.example"])
        with g.app.sessions() as s, s.begin():  # two staff members watch too
            d = Directory(s, g.app.clock)
            t = Tickets(s, clock=g.app.clock, listeners=[])
            ticket = t.get(number)
            assert ticket is not None
            for who in ("tom@example.com", "tina@example.com"):
                t.add_watcher(ticket, d.add_contact(who, staff=True), vouched="staff")
        templates = notifier_of(g.app).templates
        rendered: list[str] = []
        real = templates.render

        def counting(event, context):
            rendered.append(context["recipient"]["email"])
            return real(event, context)

        templates.render = counting  # type: ignore[method-assign]
        staff_comment(g.app, number, "Replaced the fuser.\n")
        assert deliver_due(g.app).sent == 5
        got = by_recipient(relay, 0)
    # the reporter and both customer watchers share one rendering; each staff copy names its own note address
    assert len(rendered) == 3, rendered
    bodies = {w: m.get_body(("plain",)).get_content() for w, m in got.items()}
    customers = ["rita@customer.example", "wanda@customer.example", "walt@customer.example"]
    assert len({bodies[c] for c in customers}) == 1 and "note-" not in bodies["rita@customer.example"]
    notes = {w: re.search(r"support\+note-[^\s@]+@example\.com", bodies[w]) for w in ("tom@example.com",
                                                                                      "tina@example.com")}
    assert all(notes.values()) and notes["tom@example.com"].group(0) != notes["tina@example.com"].group(0)
    assert all("Replaced the fuser." in bodies[w] for w in ("tom@example.com", "walt@customer.example"))


def test_an_imported_old_unsubscribe_mail_removes_no_watcher(tmp_path, sqlite_url):
    """`ingest` of an archive (an mbox) that holds a watcher's old unsubscribe mail: an import of old mail does
    not act on it (the watcher may have been added again since); the same mail live (stdin, an MTA pipe) does."""
    from conftest import run_cli, write_config

    from gateway.app import build_app
    from gateway.config import load
    from gateway.ourmail import make_unsubscribe_token, reply_secret

    cfg = write_config(tmp_path, sqlite_url, extra='\n[outbound]\nreply_secret = "import-test-secret-0123456789abc"\n')
    app = build_app(load(cfg))
    try:
        number = ticket_with_watchers(app, ["wanda@customer.example"])
        with app.sessions() as s:
            ticket_id = s.scalar(select(Ticket.id).where(Ticket.number == number))
        token = make_unsubscribe_token(reply_secret(app.config), ticket_id=ticket_id, ticket_number=number,
                                       recipient="wanda@customer.example")
        old = make_mail(sender="wanda@customer.example", to=f"support+{token}@example.com", subject="unsubscribe",
                        body="\n")
        archive = tmp_path / "archive.mbox"
        archive.write_bytes(b"From wanda@customer.example Mon Nov  2 09:00:00 2026\n" + old.replace(b"\r\n", b"\n")
                            + b"\n")
        p = run_cli("ingest", str(archive), config=cfg)
        assert p.returncode == 0, p.stderr
        with app.sessions() as s:
            mail = s.scalars(select(InboundMail).order_by(InboundMail.id.desc())).first()
            assert mail is not None and (mail.outcome, mail.reason) == (
                "ignored", "unsubscribe: an imported mail is not acted on")
        assert watching(app, number) == ["wanda@customer.example"]
        live = make_mail(sender="wanda@customer.example", to=f"support+{token}@example.com", subject="unsubscribe",
                         body="\n")
        p = run_cli("ingest", config=cfg, input=live)
        assert p.returncode == 0, p.stderr
        assert watching(app, number) == []
    finally:
        app.close()
