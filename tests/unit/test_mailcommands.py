"""The mail command parser (gateway.mailcommands): pure, bounded."""

from __future__ import annotations

from datetime import date

import pytest

from gateway import mailcommands as mc


def names(p: mc.Parsed) -> list[tuple[str, object]]:
    return [(c.name, c.value) for c in p.commands]


def test_commands_at_the_top_then_the_text() -> None:
    p = mc.parse("/status Resolved\n/priority HIGH\n\n/type service request\nThanks, fixed.\n/tag not-a-command\n")
    assert names(p) == [("status", "resolved"), ("priority", "high"), ("type", "service_request")]
    assert p.rest == "Thanks, fixed.\n/tag not-a-command\n"
    assert p.refused == () and p.lines == 4


@pytest.mark.parametrize("written,stored", [("in_progress", "in_progress"), ("In-Progress", "in_progress"),
                                            ("in progress", "in_progress"), ("CLOSED", "closed")])
def test_status_spellings(written: str, stored: str) -> None:
    assert names(mc.parse(f"/status {written}")) == [("status", stored)]


@pytest.mark.parametrize("written", ["change-request", "Change Request", "change_request"])
def test_type_spellings(written: str) -> None:
    assert names(mc.parse(f"/type {written}")) == [("type", "change_request")]


def test_every_command_and_its_value() -> None:
    text = ("/pending 2026-12-24\n/assign me\n/assign Bob@Example.com\n/unassign\n/group first level\n"
            "/tag vpn\n/untag printer\n/link #12 blocked-by\n/link 7 caused-by\n/time 1h30m call with Alice\n"
            "/time 45m\n/internal\n/watch carol@customer.example\n/unwatch <dave@customer.example>\nNote text")
    p = mc.parse(text)
    assert p.refused == ()
    assert names(p) == [("pending", date(2026, 12, 24)), ("assign", "me"), ("assign", "bob@example.com"),
                        ("unassign", None), ("group", "first level"), ("tag", "vpn"), ("untag", "printer"),
                        ("link", (12, "blocked-by")), ("link", (7, "caused-by")), ("time", (90, "call with Alice")),
                        ("time", (45, "")), ("internal", None), ("watch", "carol@customer.example"),
                        ("unwatch", "dave@customer.example")]
    assert p.internal and p.rest == "Note text"


@pytest.mark.parametrize("line,why", [
    ("/frobnicate now", "unknown command /frobnicate"),
    ("/status done", "unknown status 'done'"),
    ("/priority urgent", "unknown priority 'urgent'"),
    ("/type bug", "unknown type 'bug'"),
    ("/pending tomorrow", "not a date YYYY-MM-DD"),
    ("/pending 2026-02-30", "not a date YYYY-MM-DD"),
    ("/assign bob", "not an email address"),
    ("/link 12", "/link NUMBER KIND"),
    ("/link twelve blocks", "not a ticket number"),
    ("/link 12 fixes", "unknown link kind 'fixes'"),
    ("/time soon", "a duration like 1h30m"),
    ("/time 0m", "between 1 minute and 100 hours"),
    ("/time 200h", "between 1 minute and 100 hours"),
    ("/unassign bob@example.com", "/unassign takes no argument"),
    ("/internal please", "/internal takes no argument"),
    ("/tag", "/tag needs an argument"),
    ("/group " + "x" * 101, "a group name of 1-100 characters"),
])
def test_refusals_say_why(line: str, why: str) -> None:
    p = mc.parse(line + "\nrest")
    assert p.commands == ()
    assert len(p.refused) == 1 and p.refused[0].line == line.strip()[:300]
    assert why in p.refused[0].reason
    assert p.rest == "rest"  # a refused command line is still a command line: not text


def test_slash_text_is_not_a_command() -> None:
    for text in ("/etc/hosts is broken\n/status closed", "Hello\n/status closed", "  see /status closed"):
        p = mc.parse(text)
        assert not p.any and p.rest == text


def test_bounds() -> None:
    many = "\n".join(["/tag t"] * (mc.MAX_COMMANDS + 5)) + "\nbody"
    p = mc.parse(many)
    assert len(p.commands) == mc.MAX_COMMANDS
    assert len(p.refused) == 1 and "at most 20 commands" in p.refused[0].reason
    assert p.rest.startswith("/tag t") and p.rest.count("/tag t") == 5 and p.rest.endswith("body")
    long = "/tag " + "y" * mc.MAX_LINE
    p = mc.parse(long + "\nbody")
    assert p.commands == () and "at most 300 characters" in p.refused[0].reason and p.rest == "body"
    assert len(p.refused[0].line) < 80
    # only the first MAX_SCAN lines are looked at: blank lines cannot make the parser read a whole mail
    p = mc.parse("\n" * (mc.MAX_SCAN + 10) + "/status closed")
    assert p.commands == ()


def test_only_commands_leaves_no_text() -> None:
    p = mc.parse("/status closed\n\n")
    assert names(p) == [("status", "closed")] and p.rest.strip() == ""
