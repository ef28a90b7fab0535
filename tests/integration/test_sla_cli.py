"""`sla policies|tick|report`, `tickets set` and the SLA badge in `tickets list`, as a subprocess."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from conftest import run_cli, write_config
from mails import make_mail


@pytest.fixture
def cfg(tmp_path, db_url):
    return write_config(tmp_path, db_url, extra='\n[sla]\ngroup_addresses = { ops = "ops@example.com" }\n')


def ok(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def j(proc):
    return json.loads(ok(proc))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def test_policies_add_list_remove(cfg):
    ok(run_cli("sla", "policies", "add", "critical", "--response", "30", "--resolution", "240",
               "--priorities", "critical,high", "--warn-at", "75", "--escalate-to", "lead@example.com",
               config=cfg))
    ok(run_cli("sla", "policies", "add", "office", "--response", "240", "--resolution", "2400",
               "--calendar", "Europe/Berlin mon-fri 09:00-17:00", "--holidays", "2026-12-25", config=cfg))
    ok(run_cli("sla", "policies", "add", "first", "--response", "5", "--resolution", "50", "--types",
               "problem", "--position", "1", config=cfg))
    rows = j(run_cli("sla", "policies", "list", "--json", config=cfg))
    assert [r["name"] for r in rows] == ["first", "critical", "office"]
    assert rows[1]["priorities"] == ["critical", "high"] and rows[1]["warn_percent"] == 75
    assert rows[1]["escalate_to"] == ["lead@example.com"]
    assert rows[2]["calendar"] == {"tz": "Europe/Berlin", "days": [0, 1, 2, 3, 4], "start": "09:00",
                                   "end": "17:00", "holidays": ["2026-12-25"]}
    text = ok(run_cli("sla", "policies", "list", config=cfg))
    assert "Europe/Berlin mon-fri 09:00-17:00" in text and "priorities=critical,high" in text
    dup = run_cli("sla", "policies", "add", "critical", "--response", "1", "--resolution", "2", config=cfg)
    assert dup.returncode == 64 and b"exists" in dup.stderr
    bad = run_cli("sla", "policies", "add", "x", "--response", "1", "--resolution", "2", "--priorities", "urgent",
                  config=cfg)
    assert bad.returncode == 64 and b"urgent" in bad.stderr
    bad = run_cli("sla", "policies", "add", "x", "--response", "1", "--resolution", "2", "--calendar", "Mars/Base",
                  config=cfg)
    assert bad.returncode == 64
    ok(run_cli("sla", "policies", "remove", "first", config=cfg))
    assert [r["name"] for r in j(run_cli("sla", "policies", "list", "--json", config=cfg))] == ["critical", "office"]
    assert run_cli("sla", "policies", "remove", "first", config=cfg).returncode == 66  # not found


def test_tickets_set_tick_badge_and_report(cfg):
    ok(run_cli("users", "add", "bob@example.com", "--staff", "--name", "Bob", config=cfg))
    ok(run_cli("sla", "policies", "add", "critical", "--response", "30", "--resolution", "240",
               "--priorities", "critical", "--escalate-to", "lead@example.com", config=cfg))
    for i in range(3):
        ok(run_cli("ingest", config=cfg, input=make_mail(subject=f"Problem {i + 1}")))
    ok(run_cli("tickets", "set", "1", "--priority", "critical", "--assignee", "bob@example.com", "--group", "ops",
               config=cfg))
    ok(run_cli("tickets", "set", "2", "--priority", "critical", config=cfg))
    out = j(run_cli("tickets", "set", "3", "--remind-at", "2020-01-01T00:00:00Z", "--assignee", "bob@example.com",
                    "--json", config=cfg))
    assert out["changes"]["status"] == ["open", "pending"]
    bad = run_cli("tickets", "set", "1", "--priority", "urgent", config=cfg)
    assert bad.returncode == 64
    assert run_cli("tickets", "set", "9", "--status", "open", config=cfg).returncode == 66  # not found

    listed = j(run_cli("tickets", "list", "--json", config=cfg))
    assert [t["number"] for t in listed] == [3, 2, 1]  # the due pending reminder comes first
    assert listed[0]["sla"]["reminder_due"] is True
    t1 = next(t for t in listed if t["number"] == 1)
    assert t1["sla"]["policy"] == "critical" and t1["sla"]["state"] == "at_risk"  # due within the hour
    due = at(t1["sla"]["response_due_at"])
    text = ok(run_cli("tickets", "list", config=cfg))
    assert "at risk" in text and "\x1b[" not in text  # no colours when not on a terminal

    tick = j(run_cli("sla", "tick", "--now", iso(due - timedelta(minutes=20)), "--apply", "--json", config=cfg))
    assert tick["reminders"] == [{"ticket": 3, "recipients": ["bob@example.com"]}]
    assert tick["escalations"] == []
    tick = j(run_cli("sla", "tick", "--now", iso(due - timedelta(minutes=5)), "--apply", "--json", config=cfg))
    assert sorted((e["ticket"], e["kind"]) for e in tick["escalations"]) == [(1, "response_warning"),
                                                                          (2, "response_warning")]
    assert {tuple(e["recipients"]) for e in tick["escalations"]} == {
        ("bob@example.com", "ops@example.com", "lead@example.com"), ("lead@example.com",)}
    assert j(run_cli("sla", "tick", "--now", iso(due - timedelta(minutes=5)), "--apply", "--json", config=cfg))[
        "escalations"] == []
    text = ok(run_cli("sla", "tick", "--now", iso(due + timedelta(minutes=1)), "--apply", config=cfg))
    assert "#1: response breach -> bob@example.com, ops@example.com, lead@example.com" in text

    rep = j(run_cli("sla", "report", "--now", iso(due + timedelta(minutes=2)), "--json", config=cfg))
    assert rep["totals"]["breached"] == 2
    assert set(rep["by_group"]) == {"ops", "(no group)"}
    assert rep["by_assignee"]["bob@example.com"]["breached"] == 1
    text = ok(run_cli("sla", "report", "--now", iso(due + timedelta(minutes=2)), config=cfg))
    assert "bob@example.com: 1 breached" in text

    shown = j(run_cli("tickets", "show", "3", "--json", config=cfg))
    assert shown["status"] == "open" and shown["sla"]["remind_at"] is None
    assert run_cli("sla", "tick", "--now", "yesterday", config=cfg).returncode == 64


def test_badge_colours() -> None:
    from gateway.cli.tickets import badge

    assert badge("breached", True) == "\x1b[31mbreached \x1b[0m"
    assert badge("at_risk", True).startswith("\x1b[33m")
    assert badge("on_track", True).startswith("\x1b[32m")
    assert badge("on_track", False) == "on track "
    assert badge("none", True) == " " * 9
