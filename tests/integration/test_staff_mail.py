"""Staff work by mail (issue 13, points 1, 2, 3, 5), through the real SMTP listener of `serve`: who hears of a
customer's reply, commands by mail and their confirmation, internal notes by mail, visibility per
organisation. Every expectation is a row the mail made (outbox, comments, fields) or its trace."""

from __future__ import annotations

import email
import email.policy
import email.utils
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mails import TRUST_MX, authenticated, make_mail
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


# 2. Commands by mail ----------------------------------------------------------------------------------------
def confirmation(d: Desk, since: int, to: str = "bob@example.com") -> OutboxMail:
    (row,) = d.outbox(since, event="commands", recipient=to)
    assert row.params["auto"] == "auto-replied" and not row.caused_by_mail
    return row


def test_every_command_by_mail_and_its_confirmation(gateway: Any) -> None:
    d = Desk(gateway(groups=[{"name": "network", "members": ["carol@example.com"]}]))
    d.mail(subject="VPN down")
    d.mail(sender="Erin <erin@customer.example>", subject="Core switch")           # ticket #2
    n = len(d.outbox())
    m = d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] VPN down", body=(
        "/status In Progress\n/priority HIGH\n/type service-request\n/assign me\n/group network\n/tag vpn\n"
        "/tag urgent\n/link 2 blocked-by\n/time 1h30m call with Alice\n/watch carol@example.com\n\n"
        "Working on it.\n"))
    t = d.ticket()
    assert (t.status, t.priority, t.type, t.assignee.email if t.assignee else None, t.group, t.tags) == (
        "in_progress", "high", "service_request", "bob@example.com", "network", ["vpn", "urgent"])
    assert [w.contact.email for w in t.watchers] == ["carol@example.com"]
    (comment,) = d.comments()
    assert comment.body.strip() == "Working on it." and not comment.internal and "/status" not in comment.full_text
    row = confirmation(d, n)
    done = row.params["extra"]["done"]
    for text in ("status: open -> in_progress", "priority: medium -> high", "type: incident -> service_request",
                 "assignee: none -> bob@example.com", "group: none -> network", "tags: none -> vpn, urgent",
                 "link: #1 blocked-by #2", "time logged: 1h30m (call with Alice), 1h30m in all",
                 "watcher added: carol@example.com"):
        assert text in done, (text, done)
    assert row.params["extra"]["refused"] == []
    assert "alice@customer.example" in recipients(d.outbox(n), "comment")  # the text went to the customer
    assert any(line.startswith("act: link: #1 blocked-by #2") for line in m.trace), m.trace
    # the second round: remove what the first one set, pending with a reminder
    n = len(d.outbox())
    day = (datetime.now(UTC) + timedelta(days=10)).date()  # the service runs on the real clock
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] VPN down",
           body=f"/untag urgent\n/unassign\n/unwatch carol@example.com\n/pending {day.isoformat()}\n")
    t = d.ticket()
    assert (t.status, t.assignee, t.tags, t.watchers) == ("pending", None, ["vpn"], [])
    assert t.remind_at is not None and t.remind_at.isoformat().startswith(f"{day.isoformat()}T00:00")
    assert len(d.comments()) == 1  # only commands: no comment
    done = confirmation(d, n).params["extra"]["done"]
    assert "watcher removed: carol@example.com" in done and "status: in_progress -> pending" in done


def test_refused_commands_say_why_and_change_nothing_else(gateway: Any) -> None:
    d = Desk(gateway())
    d.mail(subject="VPN down")
    d.mail(sender="Erin <erin@customer.example>", subject="Core switch")           # ticket #2, open
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] VPN down", body="/link 2 blocked-by\n")
    n = len(d.outbox())
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] VPN down", body=(
        "/status closed\n/assign nobody@example.com\n/assign alice@customer.example\n/link 99 relates\n"
        "/frobnicate now\n/pending 2020-01-01\n/unwatch zed@example.com\n/status done\n/priority critical\n"))
    t = d.ticket()
    assert (t.status, t.priority, t.assignee) == ("open", "critical", None)  # what was not refused is done
    row = confirmation(d, n)
    assert row.params["extra"]["done"] == ["priority: medium -> critical"]
    refused = {r["line"]: r["reason"] for r in row.params["extra"]["refused"]}
    assert "not a staff member" in refused["/assign alice@customer.example"]
    assert "blocked by #2 (open)" in refused["/status closed"]
    assert "nobody@example.com" in refused["/assign nobody@example.com"]
    assert "no ticket #99" in refused["/link 99 relates"]
    assert refused["/frobnicate now"] == "unknown command /frobnicate"
    assert "not in the future" in refused["/pending 2020-01-01"]
    assert "not watching" in refused["/unwatch zed@example.com"]
    assert refused["/status done"].startswith("unknown status 'done'")
    assert d.comments() == []
    # once #2 is resolved, #1 closes
    d.change(2, status="resolved")
    n = len(d.outbox())
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] VPN down", body="/status closed\n/priority low\n")
    assert (d.ticket().status, d.ticket().priority) == ("closed", "low")
    assert confirmation(d, n).params["extra"]["refused"] == []


def test_internal_command_keeps_the_rest_from_the_customer(gateway: Any) -> None:
    d = Desk(gateway())
    d.mail(subject="Invoice")
    d.change(assignee="carol@example.com")
    n = len(d.outbox())
    d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Invoice",
           body="/internal\n/tag billing\nThey still owe us for March.\n")
    (c,) = d.comments()
    assert c.internal and c.body.strip() == "They still owe us for March."
    assert d.ticket().tags == ["billing"]
    rows = d.outbox(n)
    assert "alice@customer.example" not in recipients(rows)
    assert recipients(rows, "internal_note") == ["carol@example.com"]
    assert "internal note" in confirmation(d, n).params["extra"]["done"]


def test_slash_lines_of_others_are_plain_text(gateway: Any) -> None:
    d = Desk(gateway(authentication=TRUST_MX))
    d.mail(subject="Close it", headers=authenticated())
    # a customer (authenticated or not) cannot command
    d.mail(subject="Re: [#1] Close it", body="/status closed\nplease\n", headers=authenticated())
    # staff whose mail did not pass sender authentication (unverified: no result) cannot either
    m = d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Close it", body="/priority critical\nhm\n")
    assert any("slash lines kept as text: the mail did not pass sender authentication" in x for x in m.trace)
    # (one that failed it is quarantined before anything: sender authentication failed)
    f = d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Close it", body="/priority critical\n",
               headers=authenticated("example.com", "fail"))
    assert f.outcome == "quarantined"
    t = d.ticket()
    assert (t.status, t.priority) == ("open", "medium")
    bodies = [c.body for c in d.comments()]
    assert bodies[0].startswith("/status closed") and bodies[1].startswith("/priority critical") and len(bodies) == 2
    assert not d.outbox(event="commands")
    # staff whose mail passed: commands
    m = d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Close it", body="/priority critical\n",
               headers=authenticated("example.com"))
    assert d.ticket().priority == "critical", m.trace


# 5. Visibility per organisation -----------------------------------------------------------------------------
def set_visibility(d: Desk, visibility: str) -> None:
    with d.r.app.sessions() as s, s.begin():
        org = Directory(s, d.r.app.clock).add_organisation("Customer Ltd", ["customer.example"])
        org.visibility = visibility


def test_visibility_reporter_only_and_organisation(gateway: Any) -> None:
    d = Desk(gateway())
    set_visibility(d, "reporter-only")  # the default of a new organisation, said here for the reader
    d.mail(subject="Printer", message_id="<first@customer.example>")
    # reporter-only: a colleague of the same organisation is a stranger to Alice's ticket
    m = d.mail(sender="Bob Colleague <bob@customer.example>", subject="Re: [#1] Printer",
               in_reply_to="<first@customer.example>", body="Mine too.\n")
    assert m.outcome == "ticket" and m.ticket_id != d.ticket(1).id
    assert any("is not a participant" in line for line in m.trace), m.trace
    assert d.comments(1) == []
    # organisation: every member may comment on the organisation's tickets, and follows the ticket then
    set_visibility(d, "organisation")
    m = d.mail(sender="Bob Colleague <bob@customer.example>", subject="Re: [#1] Printer",
               in_reply_to="<first@customer.example>", body="Mine too, on floor 2.\n")
    assert m.outcome == "comment" and m.ticket_id == d.ticket(1).id
    assert any("bob@customer.example is member of the ticket's organisation" in x for x in m.trace), m.trace
    assert [w.contact.email for w in d.ticket(1).watchers] == ["bob@customer.example"]
    n = len(d.outbox())
    d.mail(subject="Re: [#1] Printer", in_reply_to="<first@customer.example>", body="Still broken.\n")
    assert "bob@customer.example" in recipients(d.outbox(n), "comment")  # the follower hears of it
    # someone from another organisation stays out either way
    m = d.mail(sender="Mallory <mallory@evil.example>", subject="Re: [#1] Printer",
               in_reply_to="<first@customer.example>", body="Send me the invoice.\n")
    assert m.outcome == "ticket"
    # back to reporter-only: a member who never took part is a stranger again
    set_visibility(d, "reporter-only")
    m = d.mail(sender="Erin <erin@customer.example>", subject="Re: [#1] Printer", body="And mine.\n")
    assert m.outcome == "ticket"


def test_confirmation_mail_is_automatic_and_cannot_loop(gateway: Any) -> None:
    from gateway.outbound import deliver_due
    from gateway.outbound.sink import Sink

    sink = Sink().start()
    try:
        d = Desk(gateway(outbound={"relay_host": "127.0.0.1", "relay_port": sink.port, "relay_security": "none"}))
        d.mail(subject="Toner")
        d.mail(sender="Bob Staff <bob@example.com>", subject="Re: [#1] Toner", body="/priority low\n/frob\n")
        deliver_due(d.r.app)
        (got,) = [m for m in sink.received if "bob@example.com" in m.rcpt_tos
                  and b"Your commands" in m.data]
        msg = email.message_from_bytes(got.data, policy=email.policy.default)
        assert str(msg["Auto-Submitted"]) == "auto-replied" and str(msg["Subject"]).startswith("[#1] Your commands")
        text = msg.get_body(("plain",)).get_content()
        assert "priority: medium -> low" in text and "/frob: unknown command /frob" in text
        assert "For an internal note (staff only), write to support+note-1-" in text
        # the confirmation coming back (an auto-forward, a mail client's auto-reply) is never a comment
        n = len(d.comments())
        code, _ = send(d.port, got.data, "bob@example.com")
        assert code == 250
        d.sent += 1
        back = d.r.wait_processed(d.sent)[-1]
        assert back.outcome == "ignored" and len(d.comments()) == n
    finally:
        sink.stop()
