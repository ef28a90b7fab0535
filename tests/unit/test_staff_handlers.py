"""The staff handlers on a real store (`commands` alone: tests/unit/handlers/test_commands.py), and the staff
configuration."""

from __future__ import annotations

from typing import Any

import pytest
from mails import make_mail

from gateway.config import validate
from gateway.models import InboundMail
from gateway.pipeline import MailContext


# `act` on the SQL store (SQLite and PostgreSQL); the handlers alone on the in-memory store: tests/unit/handlers
def test_act_applies_through_the_workflow_and_reports(make_app: Any) -> None:
    from gateway import mailcommands
    from gateway.envelope import Envelope
    from gateway.events import CommandsDone, TicketChanged
    from gateway.handlers import act
    from gateway.store.sql import SqlStore

    app = make_app()
    mail_id = app.intake().store(make_mail(sender="bob@example.com"), Envelope("bob@example.com",
                                                                              ("support@example.com",), "smtp"))
    seen: list[Any] = []
    with app.sessions() as s, s.begin():
        store = SqlStore(s, config=app.config, clock=app.clock, listeners=[lambda _s, e: seen.append(e)],
                         blobs=app.blobs)
        bob = store.directory.add_contact("bob@example.com", staff=True)
        alice = store.directory.add_contact("alice@customer.example")
        t = store.tickets.create(subject="Printer", reporter=alice)
        ctx = MailContext(store=store, config=app.config, clock=app.clock, mail=s.get(InboundMail, mail_id), raw=b"")
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
