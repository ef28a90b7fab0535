"""What an admin sees at the command line: header rows and aligned columns, '-' for empty fields (never
'None'), `| head` without a traceback, not-found exit codes, the SLA in `tickets show`, `sla tick --now` in
the future as a dry run, and the SMTP greeting without the library's name."""

from __future__ import annotations

import json
import mailbox
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import ROOT, run_cli, write_config
from mails import make_mail


@pytest.fixture
def cfg(tmp_path, db_url):
    return write_config(tmp_path, db_url, unknown="correspondent")


def ok(p: subprocess.CompletedProcess[bytes]) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def columns_line_up(text: str) -> None:
    """Every column of every row starts where its header starts."""
    lines = text.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    for line in lines[1:]:
        for s in starts[1:]:
            assert line[s - 2:s] == "  " and line[s] != " ", (header, line)


def test_list_commands_have_headers_aligned_columns_and_no_none(cfg, tmp_path) -> None:
    ok(run_cli("ingest", config=cfg, input=make_mail(subject="Short")))
    ok(run_cli("ingest", config=cfg, input=make_mail(
        sender="Bartholomew Longname-Withmany-Parts <bartholomew.longname@subsidiary.customer.example>",
        subject="A much longer subject line that goes on")))
    ok(run_cli("ingest", config=cfg, input=b"this is not a mail at all\n"))  # quarantined: no sender, no subject
    ok(run_cli("users", "add", "dana@example.com", config=cfg))  # no name, no organisation
    ok(run_cli("orgs", "add", "Customer Ltd", "--domain", "customer.example", config=cfg))
    for args, first in ((("tickets", "list"), "TICKET"), (("mail", "list"), "ID"), (("users", "list"), "EMAIL"),
                        (("orgs", "list"), "NAME"), (("outbox", "list"), "ID")):
        text = ok(run_cli(*args, config=cfg))
        assert text.splitlines()[0].split()[0] == first, text
        assert "None" not in text, text
        columns_line_up(text)
    tickets = ok(run_cli("tickets", "list", config=cfg)).splitlines()
    assert tickets[0].split() == ["TICKET", "STATUS", "PRIORITY", "SLA", "FROM", "SUBJECT"]
    assert "bartholomew.longname@subsidiary.customer.example" in tickets[1]
    users = ok(run_cli("users", "list", config=cfg))
    dana = next(line for line in users.splitlines() if line.startswith("dana@"))
    assert dana.split()[1:4] == ["customer", "-", "-"]
    mail = ok(run_cli("mail", "list", config=cfg)).splitlines()
    quarantined = next(line for line in mail if "quarantined" in line)
    assert " - " in quarantined
    shown = ok(run_cli("mail", "show", quarantined.split()[0], config=cfg))
    assert "None" not in shown and "sender:" in shown and "[" not in shown.split("envelope_to:")[1].split("\n")[0]


def test_head_closes_the_pipe_without_a_traceback(cfg, tmp_path) -> None:
    box = mailbox.mbox(tmp_path / "many.mbox", create=True)
    for i in range(700):  # more than a pipe's 64 KiB of rows
        box.add(make_mail(subject=f"Mail number {i} with a subject of some length to fill the pipe faster"))
    box.flush()
    ok(run_cli("ingest", str(tmp_path / "many.mbox"), config=cfg))
    env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
    for args in (["tickets", "list"], ["mail", "list"]):
        cmd = (f"'{sys.executable}' -m gateway --config '{cfg}' {' '.join(args)} | head -n 3; "
               'echo "status ${PIPESTATUS[0]}" >&2')
        p = subprocess.run(["bash", "-c", cmd], capture_output=True, env=env, timeout=120, cwd=ROOT)
        assert len(p.stdout.splitlines()) == 3
        err = p.stderr.decode()
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
        assert err.strip().splitlines()[-1] in ("status 0", "status 141"), err


def test_not_found_is_not_a_usage_error(cfg) -> None:
    for args, says in ((("tickets", "show", "99"), b"no ticket #99"),
                       (("tickets", "set", "99", "--status", "closed"), b"no ticket #99"),
                       (("mail", "show", "4711"), b"no mail 4711"),
                       (("mail", "replay", "4711"), b"no mail 4711"),
                       (("outbox", "retry", "4711"), b"no outbox mail 4711"),
                       (("sla", "policies", "remove", "nope"), b"no SLA policy 'nope'")):
        p = run_cli(*args, config=cfg)
        assert p.returncode == 66, (args, p.returncode, p.stderr)
        assert says in p.stderr
    assert run_cli("tickets", "show", "x", config=cfg).returncode == 64  # a usage error stays one


def test_tickets_show_has_the_sla_and_tick_in_the_future_is_a_dry_run(cfg) -> None:
    ok(run_cli("ingest", config=cfg, input=make_mail(subject="Before any policy")))
    assert "SLA: none" in ok(run_cli("tickets", "show", "1", config=cfg))
    ok(run_cli("sla", "policies", "add", "standard", "--response", "60", "--resolution", "480",
               "--escalate-to", "lead@example.com", config=cfg))
    ok(run_cli("users", "add", "lead@example.com", "--staff", config=cfg))
    ok(run_cli("ingest", config=cfg, input=make_mail(subject="Under the policy")))
    t = json.loads(ok(run_cli("tickets", "show", "2", "--json", config=cfg)))
    shown = ok(run_cli("tickets", "show", "2", config=cfg))
    sla_line = next(line for line in shown.splitlines() if "SLA standard" in line)
    assert f"response due {t['sla']['response_due_at']}" in sla_line
    assert f"resolution due {t['sla']['resolution_due_at']}" in sla_line
    assert "at risk" in sla_line  # due within the hour
    assert "reporter Alice Customer <alice@customer.example> (correspondent: no account)" in shown

    def state() -> tuple[Any, ...]:
        show = json.loads(ok(run_cli("tickets", "show", "2", "--json", config=cfg)))
        outbox = json.loads(ok(run_cli("outbox", "list", "--json", config=cfg)))
        return show["status"], show["sla"], sorted((r["event"], r["recipient"]) for r in outbox)

    before = state()
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    dry = run_cli("sla", "tick", "--now", later, config=cfg)
    out = ok(dry)
    assert "#2: response breach -> lead@example.com" in out and "dry run" in out and "--apply" in out
    assert state() == before  # nothing changed, nothing queued
    assert json.loads(ok(run_cli("sla", "tick", "--now", later, "--json", config=cfg)))["dry_run"] is True
    assert state() == before
    assert "dry run" in ok(run_cli("sla", "tick", "--dry-run", config=cfg))
    assert run_cli("sla", "tick", "--dry-run", "--apply", config=cfg).returncode == 64
    applied = ok(run_cli("sla", "tick", "--now", later, "--apply", config=cfg))
    assert "#2: response breach" in applied and "dry run" not in applied
    assert ("sla_response_breach", "lead@example.com") in state()[2]
    # the same sweep again has nothing left to do
    assert "#2" not in ok(run_cli("sla", "tick", "--now", later, "--apply", config=cfg))


def test_smtp_and_lmtp_greetings_name_the_host_only(tmp_path, sqlite_url) -> None:
    import asyncio
    import threading

    from gateway.config import validate
    from gateway.service import Notifier, Service

    config = validate({"gateway": {"data_dir": str(tmp_path / "var"), "addresses": ["support@example.com"]},
                       "database": {"url": sqlite_url}, "serve": {"hostname": "mx.example.com"},
                       "listen": [{"protocol": "smtp", "port": 0}, {"protocol": "lmtp", "port": 0}],
                       "http": {"listen": "127.0.0.1:0"}},
                      base_dir=tmp_path)
    service = Service(config, notifier=Notifier({}), handle_signals=False)
    thread = threading.Thread(target=lambda: asyncio.run(service.run()), daemon=True)
    thread.start()
    try:
        assert service._started.wait(30)
        greetings = {}
        for li in service.listeners:
            port = li.server.sockets[0].getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                greetings[li.spec["protocol"]] = s.recv(200).decode().strip()
        assert greetings == {"smtp": "220 mx.example.com ESMTP", "lmtp": "220 mx.example.com LMTP"}
    finally:
        service.stop_threadsafe()
        thread.join(40)
