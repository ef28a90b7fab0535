"""The HTTP listener as part of `serve`: an attachment's round trip (API -> mail to the customer -> download),
hostile HTTP clients while SMTP mail arrives, /metrics parsed by prometheus_client, /healthz, the log lines,
SIGTERM, the CLI for tokens and comments."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import mailbox
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import run_cli, write_config
from prometheus_client.parser import text_string_to_metric_families
from test_http_api import Gateway, all_pages, gateways, problem
from test_smtp import free_port, make_mail

from gateway.outbound.sender import deliver_due


@pytest.fixture
def gw(tmp_path, db_url):
    with gateways(tmp_path, db_url) as start:
        yield start


def maildir_mails(g: Gateway) -> list[email.message.EmailMessage]:
    box = mailbox.Maildir(str(g.app.config.data_dir / "outbox-maildir"), create=True)
    return [email.message_from_bytes(box.get_bytes(k), policy=email.policy.default) for k in box.keys()]


# The attachment round trip ---------------------------------------------------------------------------------------
def test_attachment_round_trip_api_mail_download(gw) -> None:
    g = gw()
    payload = bytes(range(256)) * 300  # binary, 76.8 kB
    hostile = b"<html><script>alert(document.cookie)</script></html>"
    with g.client("write") as c:
        n = c.post("/api/v1/tickets", json={"subject": "Logs please", "reporter": "erin@customer.example"}
                   ).json()["number"]
        r = c.post(f"/api/v1/tickets/{n}/comments", data={"body": "Here is the fixed config.", "internal": "false"},
                   files=[("files", ("app.conf.gz", payload, "application/gzip")),
                          ("files", ("../../etc/résumé;evil.html", hostile, "text/html"))])
        assert r.status_code == 201, r.text
        atts = r.json()["attachments"]
        assert [a["filename"] for a in atts] == ["app.conf.gz", "résumé;evil.html"]  # no path survives
        deliver_due(g.app)
        # the mail to the customer carries both files, byte for byte
        mails = [m for m in maildir_mails(g) if "erin@customer.example" in m["To"] and "Here is the fixed" in
                 m.get_body(preferencelist=("plain",)).get_content()]
        assert len(mails) == 1, [m["Subject"] for m in maildir_mails(g)]
        got = {p.get_filename(): p.get_content() for p in mails[0].iter_attachments()}
        assert got["app.conf.gz"] == payload
        assert got["résumé;evil.html"] == hostile.decode()
        # the download: the same bytes, always a download, never sniffed or rendered
        for a, want in zip(atts, (payload, hostile), strict=True):
            d = c.get(f"/api/v1/tickets/{n}/attachments/{a['id']}")
            assert d.status_code == 200 and d.content == want
            assert d.headers["content-disposition"].startswith("attachment;")
            assert d.headers["x-content-type-options"] == "nosniff"
            assert d.headers["content-type"] == "application/octet-stream"
            assert "sandbox" in d.headers["content-security-policy"]
        disposition = c.get(f"/api/v1/tickets/{n}/attachments/{atts[1]['id']}").headers["content-disposition"]
        assert disposition == "attachment; filename=\"r_sum__evil.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9%3Bevil.html"
        listed = all_pages(c, f"/api/v1/tickets/{n}/attachments")
        assert [a["id"] for a in listed] == [a["id"] for a in atts]
        # an attachment of another ticket is not reachable through this one
        other = c.post("/api/v1/tickets", json={"subject": "other", "reporter": "x@y.example"}).json()["number"]
        problem(c.get(f"/api/v1/tickets/{other}/attachments/{atts[0]['id']}"), 404)


# Hostile HTTP clients never delay a 250 ------------------------------------------------------------------------
class Trickler(threading.Thread):
    """An HTTP client that sends a request one byte every `pause` seconds (never finishing), or a complete head
    and then a body it never sends."""

    def __init__(self, port: int, *, body: bool, pause: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.body, self.pause = body, pause
        self.closed_by_server = threading.Event()
        self.answer = b""
        self.stop = threading.Event()

    def run(self) -> None:
        head = b"POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        try:
            if self.body:
                self.sock.sendall(head + b"Authorization: Bearer tgw_x\r\nContent-Length: 100000\r\n\r\n{")
                data = b"x" * 10_000_000
            else:
                data = head * 1000
            self.sock.settimeout(self.pause)
            for ch in data:
                if self.stop.is_set():
                    return
                try:
                    got = self.sock.recv(4096)
                    if not got:
                        self.closed_by_server.set()
                        return
                    self.answer += got
                except TimeoutError:
                    pass
                if not self.body:
                    self.sock.sendall(bytes([ch]))
        except OSError:
            self.closed_by_server.set()


def test_slow_and_hostile_http_clients_never_delay_a_250(gw) -> None:
    g = gw(http={"request_timeout_seconds": 4, "max_connections": 16})
    port = int(g.base.rsplit(":", 1)[1])
    # 16 connections trickling heads and 16 more (over the cap) holding them open, all at once
    tricklers = [Trickler(port, body=False) for _ in range(16)]
    tricklers += [Trickler(port, body=False, pause=1) for _ in range(16)]
    for t in tricklers:
        t.start()
    time.sleep(0.5)
    answers = []
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", g.running.port("smtp"), timeout=10) as s:
        for i in range(20):
            answers.append(s.sendmail("alice@customer.example", ["support@example.com"],
                                      make_mail(subject=f"during the attack {i}")))
    smtp_seconds = time.monotonic() - t0
    still_open = sum(not t.closed_by_server.is_set() for t in tricklers)
    # every mail had its 250 while the hostile clients were still connected (their head deadline is 4 s)
    assert answers == [{}] * 20
    assert still_open >= 16, (still_open, smtp_seconds)
    # the trickled heads are cut at the deadline (408), they do not hold the connection forever
    deadline = time.monotonic() + 15
    for t in tricklers:
        t.closed_by_server.wait(max(0.0, deadline - time.monotonic()))
    assert all(t.closed_by_server.is_set() for t in tricklers)
    assert sum(b"408" in t.answer or b"503" in t.answer for t in tricklers) >= 16
    for t in tricklers:
        t.stop.set()
        t.sock.close()
    assert len(g.running.wait_processed(20)) == 20


def test_a_body_that_never_arrives_is_cut_and_mail_goes_on(gw) -> None:
    g = gw(http={"request_timeout_seconds": 3})
    port = int(g.base.rsplit(":", 1)[1])
    slow = [Trickler(port, body=True) for _ in range(8)]
    for t in slow:
        t.start()
    with smtplib.SMTP("127.0.0.1", g.running.port("smtp"), timeout=10) as s:
        answers = [s.sendmail("alice@customer.example", ["support@example.com"], make_mail(subject=f"m{i}"))
                   for i in range(5)]
    assert answers == [{}] * 5
    assert not all(t.closed_by_server.is_set() for t in slow)  # still held while the mail went through
    deadline = time.monotonic() + 15
    for t in slow:
        t.closed_by_server.wait(max(0.0, deadline - time.monotonic()))
    # the body deadline answered (401 before any body is read, or 408 when the body times out), then closed
    assert all(t.closed_by_server.is_set() for t in slow)
    assert all(re.match(rb"HTTP/1.1 (401|408)", t.answer) for t in slow), [t.answer[:40] for t in slow]
    with g.client("read") as c:
        assert c.get("/healthz").status_code == 200


# Metrics ---------------------------------------------------------------------------------------------------------
def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_count(gw) -> None:
    g = gw()
    with smtplib.SMTP("127.0.0.1", g.running.port("smtp"), timeout=10) as s:
        for i in range(3):
            s.sendmail("alice@customer.example", ["support@example.com"], make_mail(subject=f"metrics {i}"))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("alice@customer.example", ["stranger@elsewhere.example"], make_mail())
    g.smtp(b"not a mail\r\n")
    g.running.wait_processed(4)
    deliver_due(g.app)
    with g.client(None) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = metric_values(r.text)
    assert m[("ticketgw_mails_received_total", (("transport", "smtp"),))] == 4
    assert m[("ticketgw_mail_outcomes_total", (("outcome", "ticket"),))] == 3
    assert m[("ticketgw_mail_outcomes_total", (("outcome", "quarantined"),))] == 1
    assert m[("ticketgw_mail_processing_seconds_count", ())] == 4
    assert m[("ticketgw_smtp_sessions_total", (("protocol", "smtp"),))] == 2
    assert m[("ticketgw_smtp_rejections_total", (("code", "550"), ("protocol", "smtp")))] == 1
    assert m[("ticketgw_notifications_total", (("result", "sent"),))] >= 3
    assert m[("ticketgw_quarantine_size", ())] == 1
    assert ("ticketgw_outbox_oldest_age_seconds", ()) in m
    for name in ("ticketgw_sla_escalations_total", "ticketgw_imap_poll_errors_total"):
        assert any(f.name + "_total" == name or f.name == name.removesuffix("_total")
                   for f in text_string_to_metric_families(r.text)), name
    assert all(k[0].startswith("ticketgw_") for k in m)
    assert "@" not in "".join(v for key in m for _, v in key[1])  # never an address as a label


def test_metrics_can_require_a_token(gw) -> None:
    g = gw(http={"metrics_token": True})
    with g.client(None) as anon:
        problem(anon.get("/metrics"), 401)
        assert anon.get("/healthz").status_code == 200
    with g.client("read") as c:
        assert c.get("/metrics").status_code == 200


# Health ----------------------------------------------------------------------------------------------------------
def test_healthz_ok_and_503_with_the_reason(gw, tmp_path) -> None:
    g = gw()
    with g.client(None) as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["reasons"] == []
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and len(checks["listeners"]) == 2 and checks["quarantine"]["count"] == 0
    g.running.stop()
    # an IMAP account whose server does not answer: 503 naming it, once the poller has tried
    dead = free_port()
    g2 = gw(imap=[{"name": "support-box", "host": "127.0.0.1", "port": dead, "security": "none",
                   "user": "support", "password": "x", "timeout_seconds": 2}])
    with g2.client(None) as c:
        for _ in range(100):
            r = c.get("/healthz")
            if r.status_code == 503:
                break
            time.sleep(0.1)
    assert r.status_code == 503, r.text
    assert r.json()["status"] == "unavailable"
    assert any("IMAP account support-box not connected" in x for x in r.json()["reasons"]), r.json()
    assert r.json()["checks"]["imap"][0]["connected"] is False


# Logs ------------------------------------------------------------------------------------------------------------
def test_one_line_per_mail_and_per_delivery(gw, caplog) -> None:
    caplog.set_level(logging.INFO)
    g = gw()
    raw = make_mail(subject="log me", message_id="<log-1@customer.example>")
    g.smtp(raw)
    g.smtp(b"garbage\r\n")
    mails = g.running.wait_processed(2)
    deliver_due(g.app)
    lines = [r for r in caplog.records if r.name == "gateway.mail"]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    first = lines[0].getMessage()
    assert first.startswith(f"mail {mails[0].id}: transport=smtp sender=alice@customer.example "
                            "message_id=log-1@customer.example outcome=ticket ticket=#1 reason=- ms="), first
    assert lines[0].tg["ms"] >= 0 and lines[0].tg["latency"] >= 0
    assert "outcome=quarantined" in lines[1].getMessage() and "reason=" in lines[1].getMessage()
    deliveries = [r.getMessage() for r in caplog.records if r.name == "gateway.delivery"]
    assert any(re.match(r"outbox \d+: recipient=alice@customer.example event=ticket_created result=sent "
                        r"answer=\"maildir \S+\"", d) for d in deliveries), deliveries


def test_json_log_format_and_a_failing_relay_logs_once(tmp_path, sqlite_url, caplog) -> None:
    relay = free_port()  # nothing listens: the relay is down
    cfg = write_config(tmp_path, sqlite_url, extra=f'\n[logging]\nformat = "json"\n\n[outbound]\n'
                                                   f'relay_host = "127.0.0.1"\nrelay_port = {relay}\n'
                                                   f'relay_security = "none"\nrelay_timeout_seconds = 2\n')
    p = run_cli("ingest", config=cfg, input=make_mail(subject="json log"))
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stderr.decode().splitlines() if line.startswith("{")]
    mail = [r for r in records if r["logger"] == "gateway.mail"]
    assert len(mail) == 1 and mail[0]["outcome"] == "ticket" and mail[0]["transport"] == "stdin"
    assert mail[0]["ticket"] == 1 and mail[0]["level"] == "INFO" and "mail_id" in mail[0]
    # three delivery rounds against a dead relay: one line saying it is down, not three
    from conftest import make_config

    from gateway.app import build_app

    app = build_app(make_config(tmp_path, sqlite_url, outbound={"relay_host": "127.0.0.1", "relay_port": relay,
                                                                 "relay_security": "none",
                                                                 "relay_timeout_seconds": 2}))
    caplog.set_level(logging.DEBUG)
    from datetime import timedelta

    for i in range(3):
        deliver_due(app, app.clock() + timedelta(days=i))
    down = [r for r in caplog.records if r.levelno >= logging.WARNING and "unavailable" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in down]
    assert "outgoing mail" in down[0].getMessage() and "relay 127.0.0.1" in down[0].getMessage()
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
    app.close()


# SIGTERM, start-up lines and the CLI -----------------------------------------------------------------------------
def test_serve_logs_where_everything_is_and_sigterm_stops_http(tmp_path, sqlite_url) -> None:
    smtp = free_port()
    cfg = write_config(tmp_path, sqlite_url, extra=f'\n[[listen]]\nprotocol = "smtp"\nport = {smtp}\n\n'
                                                   '[http]\nlisten = "127.0.0.1:0"\n')
    secret = run_cli("tokens", "create", "monitoring", "--scope", "read", config=cfg)
    assert secret.returncode == 0, secret.stderr
    token = secret.stdout.decode().strip()
    assert re.fullmatch(r"tgw_[A-Za-z0-9_-]{43}", token)
    listed = run_cli("tokens", "list", config=cfg).stdout.decode()
    assert "monitoring" in listed and token not in listed and token[:8] in listed
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "serve"], stderr=err)
    try:
        url = None
        for _ in range(300):
            m = re.search(r"http: (http://127\.0\.0\.1:\d+)\n", log.read_text())
            if m and "outgoing mail:" in log.read_text():
                url = m.group(1)
                break
            time.sleep(0.1)
        assert url, log.read_text()
        text = log.read_text()
        for line in (f"config: {cfg}", f"data directory: {tmp_path / 'var'}", "database: sqlite:///",
                     f"listening: smtp 127.0.0.1:{smtp}", "imap accounts: none",
                     f"outgoing mail: Maildir {tmp_path / 'var' / 'outbox-maildir'}"):
            assert line in text, (line, text)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            assert c.get("/api/v1/tickets").status_code == 200
            assert c.get("/healthz").json()["status"] == "ok"
        assert run_cli("tokens", "revoke", "monitoring", config=cfg).returncode == 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            assert c.get("/api/v1/tickets").status_code == 401
        # a connection held open does not keep SIGTERM from stopping everything
        held = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        held.sendall(b"GET /healthz HTTP/1.1\r\nHost")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - t0 < 30
        held.close()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=2)
        assert token not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_http_port_taken_stops_the_start(tmp_path, sqlite_url) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path, sqlite_url, extra=f'\n[[listen]]\nprotocol = "smtp"\nport = 0\n\n'
                                                       f'[http]\nlisten = "127.0.0.1:{port}"\n')
        p = subprocess.run([sys.executable, "-m", "gateway", "--config", str(cfg), "serve"], capture_output=True,
                           timeout=60)
    assert p.returncode == 71 and b"cannot listen" in p.stderr, p.stderr[-2000:]


def test_http_off(tmp_path, sqlite_url) -> None:
    from test_smtp import Running, config_for

    r = Running(config_for(tmp_path, sqlite_url, http={"listen": ""}))
    try:
        assert r.service.http_where is None and r.service.listeners
    finally:
        r.stop()


def test_cli_comment_with_attachment_and_download(tmp_path, sqlite_url) -> None:
    cfg = write_config(tmp_path, sqlite_url)
    created = run_cli("tickets", "create", "--subject", "From the CLI", "--reporter", "fay@customer.example",
                      "--external-id", "ext-1", "--json", config=cfg)
    assert created.returncode == 0, created.stderr
    first = json.loads(created.stdout)
    again = json.loads(run_cli("tickets", "create", "--subject", "From the CLI", "--reporter",
                               "fay@customer.example", "--external-id", "ext-1", "--json", config=cfg).stdout)
    assert again["number"] == first["number"] and (first["created"], again["created"]) == (True, False)
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF-1.4 fake\n" * 100)
    c = run_cli("tickets", "comment", str(first["number"]), "--body", "Attached.", "--attach", str(f), "--json",
                config=cfg)
    assert c.returncode == 0, c.stderr
    att = json.loads(c.stdout)["attachments"][0]
    assert att["filename"] == "report.pdf" and att["content_type"] == "application/pdf"
    out = tmp_path / "out.pdf"
    assert run_cli("tickets", "attachment", str(first["number"]), str(att["id"]), "-o", str(out),
                   config=cfg).returncode == 0
    assert out.read_bytes() == f.read_bytes()
    missing = run_cli("tickets", "attachment", str(first["number"]), "999", "-o", str(tmp_path / "x"), config=cfg)
    assert missing.returncode == 66 and b"no attachment 999" in missing.stderr  # not found: EX_NOINPUT
