"""Staff work by mail (issue 13, points 1, 2, 3, 5), through the real SMTP listener of `serve`: who hears of a
customer's reply, commands by mail and their confirmation, internal notes by mail, visibility per
organisation. Every expectation is a row the mail made (outbox, comments, fields) or its trace."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from typing import Any

import pytest
from mails import make_mail
from servehelp import Running, config_for, send
from sqlalchemy import select

from gateway.models import Comment, InboundMail, OutboxMail, Ticket
from gateway.tickets import Directory, Tickets

ALICE = "Alice Customer <alice@customer.example>"


@pytest.fixture
def gateway(tmp_path: Any, db_url: str) -> Iterator[Any]:
    running: list[Running] = []

    def start(**sections: Any) -> Running:
        r = Running(config_for(tmp_path, db_url, **sections))
        running.append(r)
        with r.app.sessions() as s, s.begin():
            d = Directory(s, r.app.clock)
            d.add_contact("bob@example.com", name="Bob Staff", staff=True)
            d.add_contact("carol@example.com", name="Carol Staff", staff=True)
            d.add_contact("dave@example.com", name="Dave Staff", staff=True)
        return r

    yield start
    for r in running:
        r.stop()


class Desk:
    """One running gateway and the mails sent to it."""

    def __init__(self, r: Running) -> None:
        self.r = r
        self.port = r.port("smtp")
        self.sent = 0

    def mail(self, *, sender: str = ALICE, rcpt: str = "support@example.com", **kw: Any) -> InboundMail:
        raw = make_mail(sender=sender, to=rcpt, **kw)
        addr = email.utils.parseaddr(sender)[1]
        code, answer = send(self.port, raw, addr, rcpt=rcpt)
        assert code == 250, answer
        self.sent += 1
        return self.r.wait_processed(self.sent)[-1]

    def outbox(self, since: int = 0, **where: Any) -> list[OutboxMail]:
        rows = self.r.outbox()[since:]
        return [o for o in rows if all(getattr(o, k) == v for k, v in where.items())]

    def ticket(self, number: int = 1) -> Ticket:
        with self.r.app.sessions() as s:
            t = s.scalar(select(Ticket).where(Ticket.number == number))
            assert t is not None
            _ = t.assignee, [w.contact.email for w in t.watchers]
            return t

    def comments(self, number: int = 1) -> list[Comment]:
        with self.r.app.sessions() as s:
            return list(s.scalars(select(Comment).join(Ticket).where(Ticket.number == number).order_by(Comment.id)))

    def change(self, number: int = 1, **fields: Any) -> None:
        with self.r.app.sessions() as s, s.begin():
            tickets = Tickets(s, clock=self.r.app.clock, listeners=self.r.app.listeners)
            t = tickets.get(number)
            assert t is not None
            if isinstance(fields.get("assignee"), str):
                fields["assignee"] = Directory(s, self.r.app.clock).contact(fields["assignee"])
            tickets.change(t, **fields)


def recipients(rows: list[OutboxMail], event: str | None = None) -> list[str]:
    return sorted(o.recipient for o in rows if event is None or o.event == event)


# 1. Staff hear about customers ------------------------------------------------------------------------------
def test_customer_reply_notifies_assignee_else_group_else_all_staff(gateway: Any) -> None:
    d = Desk(gateway(groups=[{"name": "network", "members": ["carol@example.com"]},
                             {"name": "quiet", "members": ["dave@example.com"], "notify": ["assignee"]}]))
    d.mail(subject="VPN down")
    new = d.outbox(event="staff_new_ticket")
    assert recipients(new) == ["bob@example.com", "carol@example.com", "dave@example.com"]
    # no assignee, no group: every staff member
    n = len(d.outbox())
    m = d.mail(subject="Re: [#1] VPN down", body="Still down.\n")
    assert m.outcome == "comment"
    rows = d.outbox(n)
    assert recipients(rows, "comment") == ["bob@example.com", "carol@example.com", "dave@example.com"]
    assert all(not o.caused_by_mail and o.params["staff"] for o in rows)  # never counted against the loop caps
    assert all(o.params["note"].startswith("support+note-1-") for o in rows)  # the note address, per person
    # the group's members
    d.change(group="network")
    n = len(d.outbox())
    d.mail(subject="Re: [#1] VPN down", body="Any news?\n")
    assert recipients(d.outbox(n), "comment") == ["carol@example.com"]
    # the assignee
    d.change(assignee="bob@example.com")
    n = len(d.outbox())
    d.mail(subject="Re: [#1] VPN down", body="Hello?\n")
    assert recipients(d.outbox(n), "comment") == ["bob@example.com"]
    # a group whose rule is 'assignee' only, and no assignee: nobody
    d.change(group="quiet", assignee=None)
    n = len(d.outbox())
    d.mail(subject="Re: [#1] VPN down", body="Quiet group.\n")
    assert recipients(d.outbox(n), "comment") == []
    # a staff member's public reply goes to the customer, not to the other staff
    n = len(d.outbox())
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] VPN down", body="Restarted it.\n")
    assert recipients(d.outbox(n), "comment") == ["alice@customer.example"]


def test_configured_rules_per_deployment(gateway: Any) -> None:
    d = Desk(gateway(staff={"notify": ["group"]}))
    d.mail(subject="Printer")
    n = len(d.outbox())
    d.mail(subject="Re: [#1] Printer", body="More.\n")
    assert recipients(d.outbox(n), "comment") == []  # no group, and 'all' is not a rule here


def test_staff_notices_are_not_held_by_the_robot_caps_but_by_their_own_bound(gateway: Any) -> None:
    d = Desk(gateway(notifications={"max_per_recipient_day": 2, "max_per_ticket_10min": 2},
                     staff={"max_notices_per_ticket_hour": 9}))
    d.mail(subject="Loop?")                           # 3 staff notices (staff_new_ticket)
    d.change(assignee="bob@example.com")              # 1 assignment mail to Bob
    for i in range(7):
        d.mail(subject="Re: [#1] Loop?", body=f"Reply {i}\n")
    to_bob = [o for o in d.outbox() if o.recipient == "bob@example.com" and o.event == "comment"]
    sent = [o for o in to_bob if o.status != "suppressed"]
    held = [o for o in to_bob if o.status == "suppressed"]
    assert len(sent) == 5 and len(held) == 2          # 3 + 1 + 5 = 9 mails to staff about #1 in the hour
    assert all("staff bound" in (o.last_error or "") for o in held)
    assert all("rate cap" not in (o.last_error or "") for o in to_bob)


def test_customer_reply_to_pending_ticket_reopens_it(gateway: Any) -> None:
    d = Desk(gateway())
    d.mail(subject="Waiting")
    d.change(status="pending")
    assert d.ticket().status == "pending"
    m = d.mail(subject="Re: [#1] Waiting", body="Here is the log.\n")
    assert d.ticket().status == "open"
    assert any("pending -> open (reply from customer)" in line for line in m.trace), m.trace


# 3. Internal notes by mail ----------------------------------------------------------------------------------
def test_internal_notes_by_note_address_and_a_staff_reply_stays_public(gateway: Any) -> None:
    d = Desk(gateway())
    d.mail(subject="Disk full", message_id="<first@customer.example>")
    notice = [o for o in d.outbox(event="staff_new_ticket") if o.recipient == "bob@example.com"][0]
    note_addr = notice.params["note"]
    # the signed note address from Bob's notice: an internal note, mailed to no customer
    n = len(d.outbox())
    m = d.mail(sender="Bob Staff <bob@example.com>", rcpt=note_addr, subject="Re: [#1] Disk full",
               body="Customer is on the old plan.\n")
    assert any(f"token: note address {note_addr}" in line for line in m.trace), m.trace
    # the plain note address with the subject tag
    m2 = d.mail(sender="Carol Staff <carol@example.com>", rcpt="support+note@example.com",
                subject="Re: [#1] Disk full", body="Checked the quota.\n")
    assert any("internal note (sent to the note address support+note@example.com)" in x for x in m2.trace)
    notes = d.outbox(n)
    assert "alice@customer.example" not in recipients(notes)
    assert {o.event for o in notes} <= {"internal_note"}
    # Bob's note was not addressed to anyone on the ticket yet (no assignee, no staff watchers): nobody; after
    # assigning Carol, Bob's next note reaches her, with the note address as its Reply-To
    d.change(assignee="carol@example.com")
    n = len(d.outbox())
    d.mail(sender="Bob Staff <bob@example.com>", rcpt=note_addr, subject="Re: [#1] Disk full", body="Over to you.\n")
    (to_carol,) = d.outbox(n, event="internal_note")
    assert to_carol.recipient == "carol@example.com" and to_carol.params["note"].startswith("support+note-1-")
    # a staff member's ordinary reply is public and reaches the customer
    n = len(d.outbox())
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Disk full", body="We freed 10 GB.\n")
    assert recipients(d.outbox(n), "comment") == ["alice@customer.example", "carol@example.com"]
    # a customer writing to the note address makes a public comment (only staff write notes)
    m3 = d.mail(rcpt="support+note@example.com", subject="Re: [#1] Disk full", body="Thanks!\n")
    assert m3.outcome == "comment"
    assert [(c.body.strip(), c.internal) for c in d.comments()] == [
        ("Customer is on the old plan.", True), ("Checked the quota.", True), ("Over to you.", True),
        ("We freed 10 GB.", False), ("Thanks!", False)]


def test_deprecated_global_internal_switch_still_works_and_warns(gateway: Any) -> None:
    r = gateway(gateway={"staff_comments_internal": True})
    assert any("staff_comments_internal is deprecated" in w for w in r.app.config.warnings)
    d = Desk(r)
    d.mail(subject="Old habit")
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Old habit", body="Looking.\n")
    assert [c.internal for c in d.comments()] == [True]
