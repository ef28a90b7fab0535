"""Staff work through the shared operations (CLI, API; mail commands use the same gateway.workflow) reaches
the external desk through the push queue like any change: a priority, the watchers a merge brings, the close of a merged
ticket. Once per fake desk, on SQLite and PostgreSQL."""

from __future__ import annotations

from backends.conftest import first_mail
from backends.test_contract import ALICE, delivered
from fakedesks import STATUS_FOR
from mails import make_mail

from gateway.backends.store import BackendPush
from gateway.ops import tickets as ticket_ops
from gateway.ops import work


def test_staff_changes_are_pushed(gateway):
    gw = gateway()
    gw.mail(first_mail(), ALICE)
    gw.mail(make_mail(sender="Bob <bob@customer.example>", subject="Printer smokes", body="Smoke."),
            "bob@customer.example")
    delivered(gw)
    assert not gw.rows(BackendPush, status="queued")
    first, second = sorted(gw.desk.keys(), key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
    ticket_ops.change_ticket(gw.app, 1, {"priority": "high", "add_tags": ["printer"], "group": "office"})
    (row,) = gw.rows(BackendPush, status="queued")
    assert row.op == "update" and set(row.params) == {"priority"}
    work.merge(gw.app, 2, 1)  # Bob, #2's reporter, watches #1 now: a participant there; #2 closes
    queued = gw.rows(BackendPush, status="queued")
    closed = STATUS_FOR[gw.desk.kind].get("closed")
    assert [r.op for r in queued] == ["update", "participants"] + (["update"] if closed else [])
    assert queued[1].params == {"emails": ["bob@customer.example"]}
    if closed:
        assert queued[2].params == {"status": closed}
    assert gw.flush().failed == 0
    assert not gw.rows(BackendPush, status="queued")
    if closed:
        assert gw.desk.status_of(second) == closed
    assert gw.desk.status_of(first) != closed
