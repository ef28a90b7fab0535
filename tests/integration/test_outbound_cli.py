"""`ticket-gateway outbox list|retry|flush` as a subprocess, with the embedded Maildir and with a relay."""

from __future__ import annotations

import json
import mailbox

from conftest import run_cli, write_config
from mails import make_mail

from gateway.outbound.sink import Sink, free_port


def test_outbox_cli_with_the_embedded_maildir(tmp_path, sqlite_url):
    cfg = write_config(tmp_path, sqlite_url)
    r = run_cli("ingest", "--sender", "alice@customer.example", config=cfg, input=make_mail())
    assert r.returncode == 0, r.stderr
    r = run_cli("outbox", "list", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["event"], x["recipient"], x["status"], x["ticket"]) for x in rows] == [
        ("ticket_created", "alice@customer.example", "queued", 1)]
    r = run_cli("outbox", "flush", config=cfg)
    assert r.returncode == 0 and b"sent 1" in r.stdout, r.stderr
    box = mailbox.Maildir(str(tmp_path / "var" / "outbox-maildir"), create=False)
    assert len(list(box)) == 1
    assert (tmp_path / "var" / "reply-secret").is_file()  # generated on first start
    r = run_cli("outbox", "list", config=cfg)
    assert b"sent" in r.stdout and b"ticket_created" in r.stdout
    r = run_cli("outbox", "retry", "1", config=cfg)
    assert r.returncode == 65 and b"already sent" in r.stderr


def test_outbox_cli_relay_down_retry_and_flush(tmp_path, sqlite_url):
    port = free_port()
    cfg = write_config(tmp_path, sqlite_url, extra=f'''
[outbound]
relay_host = "127.0.0.1"
relay_port = {port}
relay_security = "none"
''')
    assert run_cli("ingest", "--sender", "alice@customer.example", config=cfg, input=make_mail()).returncode == 0
    r = run_cli("outbox", "flush", "--json", config=cfg)
    assert r.returncode == 75 and json.loads(r.stdout)["deferred"] == 1
    rows = json.loads(run_cli("outbox", "list", "--json", config=cfg).stdout)
    assert rows[0]["status"] == "queued" and rows[0]["attempts"] == 1 and "unreachable" in rows[0]["last_error"]
    with Sink(port) as sink:
        assert run_cli("outbox", "flush", config=cfg).returncode == 0  # not due yet: backing off
        assert sink.received == []
        assert run_cli("outbox", "retry", "1", config=cfg).returncode == 0
        r = run_cli("outbox", "flush", config=cfg)
        assert r.returncode == 0 and b"sent 1" in r.stdout
        assert [m.rcpt_tos for m in sink.received] == [["alice@customer.example"]]


def test_check_config_example_has_the_outbound_sections():
    r = run_cli("check-config", "--example")
    assert b"[outbound]" in r.stdout and b"[notifications]" in r.stdout and b"reply_secret" in r.stdout
