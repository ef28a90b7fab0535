"""The `commands` handler alone: who may command, what is taken out of the text, what marks a note."""

from __future__ import annotations

from typing import Any

import pytest
from mails import make_mail

from gateway import auth
from gateway.config import validate
from gateway.handlers import commands
from gateway.mime import parse_mail
from gateway.models import Contact, InboundMail
from gateway.pipeline import MailContext


def ctx_for(body: str, *, role: str = "staff", rcpt: str = "support@example.com", verdict: str | None = None,
            **config: Any) -> MailContext:
    raw = make_mail(sender="Bob <bob@example.com>", to=rcpt, body=body)
    cfg = validate({"gateway": {"addresses": ["support@example.com"]}, **config})
    ctx = MailContext(session=None, config=cfg, clock=None, blobs=None, tickets=None,
                      directory=None, mail=InboundMail(envelope_to=[rcpt]), raw=raw)
    ctx.parsed = parse_mail(raw)
    ctx.sender = Contact(email="bob@example.com", role=role)
    ctx.sender_email = "bob@example.com"
    ctx.body = ctx.full_text = body
    ctx.html = "<p>/status closed</p>"
    ctx.auth = auth.AuthResult(verdict=verdict) if verdict else auth.AuthResult()
    return ctx


def test_staff_commands_are_taken_out_of_the_text() -> None:
    ctx = ctx_for("/status closed\n/internal\nThe note.\n")
    commands.handle(ctx)
    assert ctx.commands is not None and [c.name for c in ctx.commands.commands] == ["status", "internal"]
    assert ctx.body == "The note.\n" and ctx.full_text == "The note.\n" and ctx.html is None
    assert ctx.internal == "/internal"


@pytest.mark.parametrize("role,config,verdict,why", [
    ("customer", {}, None, "is not staff"),
    ("correspondent", {}, None, "is not staff"),
    ("staff", {"staff": {"commands": False}}, None, "staff.commands is off"),
    ("staff", {"authentication": {"trusted_authserv_ids": ["mx.example.com"]}}, None,
     "did not pass sender authentication"),
    ("staff", {"authentication": {"trusted_authserv_ids": ["mx.example.com"]}}, auth.FAIL,
     "did not pass sender authentication"),
])
def test_anyone_else_s_slash_lines_are_text(role: str, config: dict[str, Any], verdict: str | None,
                                            why: str) -> None:
    ctx = ctx_for("/status closed\nHello\n", role=role, verdict=verdict, **config)
    commands.handle(ctx)
    assert ctx.commands is None and ctx.body == "/status closed\nHello\n" and not ctx.internal
    if role == "staff":
        assert any(why in line for line in ctx.trace), ctx.trace


def test_authenticated_staff_may_command_where_authentication_is_configured() -> None:
    ctx = ctx_for("/priority high\n", verdict=auth.PASS,
                  authentication={"trusted_authserv_ids": ["mx.example.com"]})
    commands.handle(ctx)
    assert ctx.commands is not None and ctx.body == ""
    assert any("nothing else: no comment" in line for line in ctx.trace)


def test_note_address_marks_a_staff_note_only() -> None:
    ctx = ctx_for("A note.\n", rcpt="support+note@example.com")
    commands.handle(ctx)
    assert ctx.internal == "sent to the note address support+note@example.com" and ctx.commands is None
    ctx = ctx_for("A note.\n", rcpt="support+note@example.com", role="customer")
    commands.handle(ctx)
    assert not ctx.internal
    ctx = ctx_for("A note.\n", rcpt="support+note@example.com", staff={"note_subaddress": ""})
    commands.handle(ctx)
    assert not ctx.internal


# `act` alone, on a real store (SQLite and PostgreSQL) ---------------------------------------------------------
def test_act_applies_through_the_workflow_and_reports(make_app: Any) -> None:
    from gateway import mailcommands
    from gateway.envelope import Envelope
    from gateway.events import CommandsDone, TicketChanged
    from gateway.handlers import act
    from gateway.tickets import Directory, Tickets

    app = make_app()
    mail_id = app.intake().store(make_mail(sender="bob@example.com"), Envelope("bob@example.com",
                                                                              ("support@example.com",), "smtp"))
    seen: list[Any] = []
    with app.sessions() as s, s.begin():
        d = Directory(s, app.clock)
        bob = d.add_contact("bob@example.com", staff=True)
        alice = d.add_contact("alice@customer.example")
        tickets = Tickets(s, clock=app.clock, listeners=[lambda _s, e: seen.append(e)])
        t = tickets.create(subject="Printer", reporter=alice)
        ctx = MailContext(session=s, config=app.config, clock=app.clock, blobs=app.blobs, tickets=tickets,
                          directory=d, mail=s.get(InboundMail, mail_id), raw=b"")
        ctx.ticket, ctx.sender = t, bob
        ctx.commands = mailcommands.parse("/priority high\n/assign me\n/tag a\n/link 99 relates\n/time 30m\n"
                                          "/status closed\n/internal\n")
        act.handle(ctx)
        assert (t.priority, t.assignee_id, t.tags, t.status) == ("high", bob.id, ["a"], "closed")
    changes = [e.changes for e in seen if isinstance(e, TicketChanged)]
    assert [sorted(c) for c in changes] == [["assignee", "priority", "tags"], ["status"]]  # two changes
    (done,) = [e for e in seen if isinstance(e, CommandsDone)]
    assert done.by.email == "bob@example.com" and done.mail_id == mail_id
    assert "time logged: 30m, 30m in all" in done.done and "status: open -> closed" in done.done
    assert dict(done.refused) == {"/link 99 relates": "no ticket #99",
                                  "/internal": "no note made: a new ticket's first mail is its description, "
                                               "and a mail of commands only has no text"}


def test_staff_config_is_checked() -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as e:
        validate({"staff": {"notify": ["assignee", "boss"], "note_subaddress": "No+te"},
                  "groups": [{"name": "a", "members": ["not-an-address"]}, {"name": "a"}, {"members": []}]})
    errors = "\n".join(e.value.errors)
    for text in ("staff.notify: 'boss' is not one of assignee, group, all", "staff.note_subaddress:",
                 "groups[0].members: not an email address", "groups[1].name: group 'a' is defined twice",
                 "groups[2].name: required key is missing"):
        assert text in errors, errors
    ok = validate({"gateway": {"staff_comments_internal": True}})
    assert ok.warnings and "deprecated" in ok.warnings[0]
    assert validate({}).warnings == []
