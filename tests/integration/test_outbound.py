"""Outbound mail through the real pipeline and a real SMTP sink (aiosmtpd on a loopback port)."""

from __future__ import annotations

import email
import email.policy
import threading
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid

import pytest
from mails import TRUST_MX, authenticated, make_mail
from sqlalchemy import func, select

from gateway.intake import Envelope
from gateway.models import Contact, OutboxMail, Ticket
from gateway.outbound import deliver_due, flush
from gateway.outbound.sink import Sink, free_port
from gateway.tickets import Directory, Tickets

SUPPORT = "support@example.com"


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


def relay(port: int, **extra) -> dict:
    return {"relay_host": "127.0.0.1", "relay_port": port, "relay_security": "none", **extra}


def ingest(app, raw: bytes, mail_from: str | None = None, rcpt: tuple[str, ...] = (SUPPORT,)):
    if mail_from is None:
        frm = email.message_from_bytes(raw, policy=email.policy.default)["From"]
        mail_from = getaddresses([str(frm)])[0][1] if frm else ""
    return app.intake().ingest(raw, Envelope(mail_from, rcpt, "smtp"))


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def to_whom(sink: Sink, start: int = 0) -> list[str]:
    return sorted(r for m in sink.received[start:] for r in m.rcpt_tos)


def for_rcpt(sink: Sink, rcpt: str, start: int = 0) -> list[EmailMessage]:
    return [parse(m.data) for m in sink.received[start:] if rcpt in m.rcpt_tos]


def reply_to(original: EmailMessage, *, sender: str, body: str, extra: dict | None = None,
             threading_headers: bool = True) -> bytes:
    """What a mail client makes of 'Reply': To the Reply-To, Re: subject, In-Reply-To/References."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(original["Reply-To"])
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip(">"))
    if threading_headers:
        msg["In-Reply-To"] = str(original["Message-ID"])
        msg["References"] = (str(original.get("References", "")) + " " + str(original["Message-ID"])).strip()
    for k, v in (extra or {}).items():
        msg[k] = v
    msg.set_content(body)
    return bytes(msg)


def add_staff(app, email_addr: str = "bob@example.com", name: str = "Bob Staff") -> None:
    with app.sessions() as s, s.begin():
        Directory(s, app.clock).add_contact(email_addr, name=name, staff=True)


def outbox(app, **where) -> list[OutboxMail]:
    with app.sessions() as s:
        q = select(OutboxMail).order_by(OutboxMail.id)
        for k, v in where.items():
            q = q.where(getattr(OutboxMail, k) == v)
        return list(s.scalars(q))


# Round trip -----------------------------------------------------------------------------------------------
def test_round_trip_ack_reply_and_staff_answer(make_app, sink):
    app = make_app(outbound=relay(sink.port), authentication=TRUST_MX)
    add_staff(app)
    # Alice's mail passed DMARC at our MTA: Carol, whom she Cc'd, is a watcher the gateway may mail
    r = ingest(app, make_mail(cc="Carol Colleague <carol@customer.example>", headers=authenticated()))
    assert r.outcome == "ticket" and r.ticket_number == 1
    c = deliver_due(app)
    assert c.sent == 3 and c.deferred == 0
    assert to_whom(sink) == ["alice@customer.example", "bob@example.com", "carol@customer.example"]
    ack = for_rcpt(sink, "alice@customer.example")[0]
    assert "carol@customer.example" in str(ack["Cc"])  # the acknowledgement shows whom it went to
    to_carol = for_rcpt(sink, "carol@customer.example")[0]
    assert "wrote to us with you in Cc" in to_carol.get_body(("plain",)).get_content()
    assert "[#1]" in str(ack["Subject"])
    assert str(ack["Auto-Submitted"]) == "auto-replied"
    assert str(ack["X-Auto-Response-Suppress"]) == "All"
    assert ack["X-Ticket-Gateway-Loop"] is not None
    assert str(ack["Message-ID"]).endswith("@example.com>")
    assert ack.get_content_type() == "multipart/alternative"
    reply_addr = getaddresses([str(ack["Reply-To"])])[0][1]
    assert reply_addr.startswith("support+1-")
    assert sink.received[0].mail_from.startswith("support+1-")  # VERP envelope sender

    # the customer answers the acknowledgement: a comment on the same ticket, sent on to the watcher
    n = len(sink.received)
    r2 = ingest(app, reply_to(ack, sender="Alice Customer <alice@customer.example>", body="More details.\n"),
                rcpt=(reply_addr,))
    assert r2.outcome == "comment" and r2.ticket_number == 1, r2.trace
    assert any(t.startswith("token: reply address") for t in r2.trace)
    assert deliver_due(app).sent == 2
    # never back to its author; staff hear of it (no assignee, no group: every staff member)
    assert to_whom(sink, n) == ["bob@example.com", "carol@customer.example"]
    note = for_rcpt(sink, "carol@customer.example", n)[0]
    assert "More details." in note.get_body(("plain",)).get_content()
    assert "carol@customer.example" in str(note["Cc"]) and "alice@customer.example" in str(note["To"])

    # staff answers the new-ticket notice: the customer and the watcher get it, the author does not
    n = len(sink.received)
    notice = for_rcpt(sink, "bob@example.com")[0]
    assert "For an internal note (staff only), write to support+note-1-" in notice.get_body(("plain",)).get_content()
    r3 = ingest(app, reply_to(notice, sender="Bob Staff <bob@example.com>", body="Fixed it, please check.\n"))
    assert r3.outcome == "comment" and r3.ticket_number == 1, r3.trace
    assert deliver_due(app).sent == 2
    assert to_whom(sink, n) == ["alice@customer.example", "carol@customer.example"]
    answer = for_rcpt(sink, "alice@customer.example", n)[0]
    assert "Fixed it" in answer.get_body(("plain",)).get_content()
    assert str(answer["Auto-Submitted"]) == "auto-generated"
    # threads with the customer's previous mails
    refs = str(answer["References"])
    assert str(ack["Message-ID"]).strip("<>") in refs
    assert answer["In-Reply-To"] is not None and answer["Thread-Index"] and answer["Thread-Topic"]

    # and the customer's reply to that answer lands on the ticket again, by the answer's Message-ID
    r4 = ingest(app, reply_to(answer, sender="alice@customer.example", body="Works, thanks.\n"))
    assert r4.outcome == "comment" and r4.ticket_number == 1
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 1


def test_outbox_rows_commit_with_the_change(make_app, sink):
    """A dry run writes nothing, so it queues nothing either."""
    app = make_app(outbound=relay(sink.port))
    app.intake().ingest(make_mail(), Envelope("alice@customer.example", (SUPPORT,)), dry_run=True)
    assert outbox(app) == []


def _refuse_outbox_inserts(app, on: bool) -> None:
    """A real database trigger that makes every INSERT into the outbox fail (or drops it again)."""
    from sqlalchemy import text

    pg = app.engine.dialect.name == "postgresql"
    with app.engine.begin() as c:
        if not on:
            c.execute(text("DROP TRIGGER tg_refuse ON outbox" if pg else "DROP TRIGGER tg_refuse"))
        elif pg:
            c.execute(text("CREATE FUNCTION tg_refuse() RETURNS trigger AS $$ BEGIN "
                           "RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"))
            c.execute(text("CREATE TRIGGER tg_refuse BEFORE INSERT ON outbox FOR EACH ROW "
                           "EXECUTE FUNCTION tg_refuse()"))
        else:
            c.execute(text("CREATE TRIGGER tg_refuse BEFORE INSERT ON outbox "
                           "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))


@pytest.mark.parametrize("batched", [False, True], ids=["one", "batch"])
def test_a_notification_that_cannot_be_queued_costs_the_mail_nothing(make_app, sink, batched):
    """The outbox refuses every row (a trigger): the mail still opens its ticket, its Message-ID is known (a
    reply threads), and no half-written notification remains; in an import batch the mails around it are
    untouched too."""
    app = make_app(outbound=relay(sink.port))
    add_staff(app)
    _refuse_outbox_inserts(app, True)
    first = make_mail(message_id="<first@customer.example>")
    other = make_mail(sender="carol@customer.example", subject="Other", message_id="<other@customer.example>")
    env = Envelope("alice@customer.example", (SUPPORT,), "file")
    if batched:
        b = app.intake().batch()
        results = [b.ingest(first, env), b.ingest(other, env)]
        b.commit()
    else:
        results = [app.intake().ingest(first, env), app.intake().ingest(other, env)]
    assert [r.outcome for r in results] == ["ticket", "ticket"]
    assert outbox(app) == []
    _refuse_outbox_inserts(app, False)
    reply = make_mail(subject="Re: Printer on fire", message_id="<reply@customer.example>",
                      in_reply_to="<first@customer.example>", references="<first@customer.example>")
    r = ingest(app, reply)
    assert (r.outcome, r.ticket_number) == ("comment", results[0].ticket_number)
    r = ingest(app, make_mail(sender="dave@customer.example", subject="Third", message_id="<third@customer.example>"))
    assert r.outcome == "ticket"  # and the next new ticket's notifications are queued as usual
    assert sorted((row.event, row.recipient) for row in outbox(app)) == [  # staff hear of the customer's reply
        ("comment", "bob@example.com"), ("staff_new_ticket", "bob@example.com"),
        ("ticket_created", "dave@customer.example")]


# Relay down ------------------------------------------------------------------------------------------------
def test_relay_down_then_back_nothing_lost(make_app, clock):
    port = free_port()
    app = make_app(outbound=relay(port, retry_base_seconds=60, retry_max_seconds=600))
    add_staff(app)
    for i in range(3):
        ingest(app, make_mail(sender=f"c{i}@customer.example", subject=f"Problem {i}"))
    rows = outbox(app)
    assert len(rows) == 6 and all(r.status == "queued" for r in rows)
    c = deliver_due(app)
    assert c.deferred == 6 and c.sent == 0
    assert deliver_due(app).claimed == 0  # backing off: nothing due yet
    clock.advance(seconds=61)
    assert deliver_due(app).deferred == 6  # still down
    rows = outbox(app)
    assert all(r.attempts == 2 and "unreachable" in (r.last_error or "") for r in rows)
    sink = Sink(port).start()
    try:
        clock.advance(minutes=5)
        c = flush(app)
        assert c.sent == 6 and c.failed == 0
        ids = sorted(parse(m.data)["Message-ID"] for m in sink.received)
        assert len(ids) == 6 and len(set(ids)) == 6
        assert sorted(str(i).strip("<>") for i in ids) == sorted(r.message_id for r in outbox(app))
        assert all(r.status == "sent" for r in outbox(app))
        assert flush(app).claimed == 0
    finally:
        sink.stop()


def test_relay_stops_midway(make_app, clock):
    sink = Sink().start()
    app = make_app(outbound=relay(sink.port))
    ingest(app, make_mail(sender="a@customer.example", subject="one"))
    assert deliver_due(app).sent == 1
    sink.stop()
    ingest(app, make_mail(sender="b@customer.example", subject="two"))
    assert deliver_due(app).deferred == 1
    sink2 = Sink(sink.port).start()
    try:
        clock.advance(hours=1)
        assert deliver_due(app).sent == 1
        assert [m.rcpt_tos for m in sink2.received] == [["b@customer.example"]]
    finally:
        sink2.stop()


def test_permanent_refusal_fails_temporary_defers(make_app, clock):
    sink = Sink(reject={"gone@customer.example": 550, "full@customer.example": 452}).start()
    try:
        app = make_app(outbound=relay(sink.port))
        ingest(app, make_mail(sender="gone@customer.example"))
        ingest(app, make_mail(sender="full@customer.example", subject="other"))
        c = deliver_due(app)
        assert (c.sent, c.failed, c.deferred) == (0, 1, 1)
        gone = outbox(app, recipient="gone@customer.example")[0]
        assert gone.status == "failed" and "550" in gone.last_error
        full = outbox(app, recipient="full@customer.example")[0]
        assert full.status == "queued" and "452" in full.last_error and full.next_attempt_at > clock()
        clock.advance(hours=49)  # outbound.give_up_hours = 48
        assert deliver_due(app).failed == 1
        assert "gave up" in outbox(app, recipient="full@customer.example")[0].last_error
    finally:
        sink.stop()


def test_two_senders_never_send_a_row_twice(make_app, sink):
    app = make_app(outbound=relay(sink.port, batch_size=7))
    other = make_app(outbound=relay(sink.port, batch_size=5))
    for i in range(30):
        ingest(app, make_mail(sender=f"c{i}@customer.example", subject=f"Problem {i}"))
    errors = []

    def run(a):
        try:
            while flush(a).claimed:
                pass
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(a,)) for a in (app, other, app)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [str(parse(m.data)["Message-ID"]) for m in sink.received]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert all(r.status == "sent" and r.attempts == 1 for r in outbox(app))


# Loops and automatic mail ------------------------------------------------------------------------------------
def test_out_of_office_gets_no_acknowledgement(make_app, sink):
    app = make_app(outbound=relay(sink.port))
    r = ingest(app, make_mail(subject="Out of Office: back on Monday",
                              headers={"Auto-Submitted": "auto-replied"}))
    assert r.outcome == "ignored"
    r = ingest(app, make_mail(sender="noreply@shop.example", subject="Your order"))
    assert r.outcome == "ignored"
    assert outbox(app) == []
    # the reporter's out-of-office answering our acknowledgement: no comment, nothing sent
    ingest(app, make_mail())
    deliver_due(app)
    ack = for_rcpt(sink, "alice@customer.example")[0]
    n = len(outbox(app))
    r = ingest(app, reply_to(ack, sender="alice@customer.example", body="I am out of the office.\n",
                             extra={"Auto-Submitted": "auto-replied"}))
    assert r.outcome == "ignored"
    assert len(outbox(app)) == n


def test_our_own_mail_coming_back_is_a_loop(make_app, sink):
    app = make_app(outbound=relay(sink.port))
    ingest(app, make_mail())
    deliver_due(app)
    ours = sink.received[0].data
    # with our loop header (classify sees it)
    r = ingest(app, ours, mail_from="alice@customer.example")
    assert r.outcome == "ignored" and "loop" in (r.reason or "")
    # headers stripped by some forwarder, but our Message-ID is still there
    msg = parse(ours)
    for h in ("X-Ticket-Gateway-Loop", "Auto-Submitted", "X-Auto-Response-Suppress", "Precedence"):
        del msg[h]
    del msg["From"]
    msg["From"] = "forwarder@customer.example"
    r = ingest(app, bytes(msg), mail_from="forwarder@customer.example")
    assert r.outcome == "ignored" and "our own Message-ID" in (r.reason or ""), r.trace
    assert len(outbox(app)) == 1


def test_ping_pong_of_two_header_less_autoresponders_is_bounded(make_app, sink, clock):
    """Alice (reporter) and Carol (watcher) both answer every mail at once, without any auto-reply header,
    for an hour of simulated time."""
    app = make_app(outbound=relay(sink.port), authentication=TRUST_MX)
    ingest(app, make_mail(cc="carol@customer.example", headers=authenticated()))
    seen = 0
    for minute in range(60):
        deliver_due(app)
        new = sink.received[seen:]
        seen = len(sink.received)
        for m in new:
            original = parse(m.data)
            for who in m.rcpt_tos:
                ingest(app, reply_to(original, sender=who, body=f"Thank you for your mail ({minute}).\n",
                                     threading_headers=False))
        clock.advance(minutes=1)
    total = len(sink.received)
    cap = app.config.notifications["max_per_ticket_10min"]
    # the cap counts notification rounds; the first round (the acknowledgement) has two copies: Alice, Carol
    rounds = len({o.batch for o in outbox(app) if o.status != "suppressed"})
    assert 3 <= rounds <= cap and total <= cap + 1, (rounds, total)
    assert outbox(app, status="suppressed"), "the cap held something back"
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 1


def test_bounce_to_verp_address_marks_recipient_undeliverable(make_app, sink):
    app = make_app(outbound=relay(sink.port), authentication=TRUST_MX)
    add_staff(app)
    ingest(app, make_mail(cc="carol@customer.example", headers=authenticated()))
    deliver_due(app)
    got = next(m for m in sink.received if "alice@customer.example" in m.rcpt_tos)
    verp = got.mail_from
    mid = str(parse(got.data)["Message-ID"])
    dsn = make_dsn(to=verp, failed="alice@customer.example", original_message_id=mid, status="5.1.1")
    r = ingest(app, dsn, mail_from="", rcpt=(verp,))
    assert r.outcome == "ignored" and "bounce" in (r.reason or "")
    with app.sessions() as s:
        alice = s.scalar(select(Contact).where(Contact.email == "alice@customer.example"))
        assert alice.undeliverable and "hard bounce" in alice.undeliverable_reason
    # a staff comment now reaches the watcher only
    n = len(sink.received)
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        ticket = t.get(1)
        bob = Directory(s, app.clock).contact("bob@example.com")
        t.add_comment(ticket, author=bob, author_email=bob.email, body="Any news?", source="cli")
    deliver_due(app)
    assert to_whom(sink, n) == ["carol@customer.example"]


def test_soft_bounce_marks_nothing(make_app, sink):
    app = make_app(outbound=relay(sink.port))
    ingest(app, make_mail())
    deliver_due(app)
    got = sink.received[0]
    dsn = make_dsn(to=got.mail_from, failed="alice@customer.example",
                   original_message_id=str(parse(got.data)["Message-ID"]), status="4.2.2", action="delayed")
    ingest(app, dsn, mail_from="", rcpt=(got.mail_from,))
    with app.sessions() as s:
        assert not s.scalar(select(Contact).where(Contact.email == "alice@customer.example")).undeliverable


def make_dsn(*, to: str, failed: str, original_message_id: str, status: str, action: str = "failed") -> bytes:
    """An RFC 3464 delivery status notification, as Postfix writes it."""
    mid = make_msgid(domain="mx.customer.example")
    return f"""From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: {mid}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered to <{failed}>.

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.example

Final-Recipient: rfc822; {failed}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {'550' if status.startswith('5') else '452'} {status} mailbox problem

--B1
Content-Type: text/rfc822-headers

Message-ID: {original_message_id}
From: Support <support@example.com>
To: {failed}
Subject: [#1] We received your request

--B1--
""".replace("\n", "\r\n").encode()


# Reply tokens ------------------------------------------------------------------------------------------------
def test_valid_token_from_another_sender_is_a_stranger(make_app, sink):
    app = make_app(outbound=relay(sink.port))
    ingest(app, make_mail(cc="carol@customer.example"))
    deliver_due(app)
    ack = for_rcpt(sink, "alice@customer.example")[0]
    before = len(outbox(app, ticket_id=1))
    r = ingest(app, reply_to(ack, sender="Mallory <mallory@elsewhere.example>", body="Let me in.\n"))
    assert r.outcome == "ticket" and r.ticket_number == 2, r.trace
    assert any("issued to someone else" in t for t in r.trace)
    with app.sessions() as s:
        t1 = Tickets(s, clock=app.clock).get(1)
        assert [c.body for c in t1.comments] == []
    assert len(outbox(app, ticket_id=1)) == before  # nothing to ticket 1's people
    n = len(sink.received)
    deliver_due(app)
    assert to_whom(sink, n) == ["mallory@elsewhere.example"]  # only the stranger's own acknowledgement


def test_forged_token_matches_nothing(make_app, sink):
    app = make_app(outbound=relay(sink.port))
    ingest(app, make_mail())
    forged = "support+1-" + "a" * 24 + "@example.com"
    r = ingest(app, make_mail(to=forged, subject="Completely new matter"), rcpt=(forged,))
    assert r.outcome == "ticket" and r.ticket_number == 2
    assert any("forged" in t for t in r.trace)
    r = ingest(app, make_mail(to="support+99-" + "b" * 24 + "@example.com", subject="another"))
    assert r.outcome == "ticket" and r.ticket_number == 3


def test_token_in_uppercase_still_matches(make_app, sink):
    app = make_app(outbound=relay(sink.port))
    ingest(app, make_mail())
    deliver_due(app)
    ack = for_rcpt(sink, "alice@customer.example")[0]
    addr = getaddresses([str(ack["Reply-To"])])[0][1].upper()
    r = ingest(app, make_mail(to=addr, subject="no tag, no references"), rcpt=(addr,))
    assert r.outcome == "comment" and r.ticket_number == 1, r.trace


# Header injection ------------------------------------------------------------------------------------------
INJECTIONS = [
    ("raw CR/LF in subject", b"Subject: Help\r\nBcc: victim1@evil.example\r\n", None),
    ("encoded CR/LF in subject", b"Subject: =?utf-8?q?Help=0D=0ABcc=3A_victim2=40evil=2Eexample?=\r\n", None),
    ("double-encoded CR/LF in subject",
     b"Subject: =?utf-8?q?=3D=3Futf-8=3Fq=3FHelp=3D0D=3D0ABcc=3D3A=5Fvictim7=3D40evil=3D2Eexample=3F=3D?=\r\n", None),
    ("encoded LF in name", b"Subject: Help\r\n",
     b"From: =?utf-8?b?" + __import__("base64").b64encode(b"Eve\nBcc: victim3@evil.example\nX: y").rstrip(b"=")
     + b"?= <eve@customer.example>\r\n"),
    ("encoded CRLF in name with comma and angle", b"Subject: Help\r\n",
     b"From: =?utf-8?q?Eve=0D=0ATo=3A_victim4=40evil=2Eexample=2C_=3Cvictim5=40evil=2Eexample=3E?= "
     b"<eve@customer.example>\r\n"),
]


@pytest.mark.parametrize("label,subject,from_", INJECTIONS, ids=[i[0] for i in INJECTIONS])
def test_header_injection_adds_no_header_and_no_recipient(make_app, sink, label, subject, from_):
    app = make_app(outbound=relay(sink.port), authentication=TRUST_MX)
    add_staff(app)
    raw = b"Authentication-Results: mx.example.com; dmarc=pass header.from=customer.example\r\n" + \
        b"Received: from mail.customer.example by mx.example.com; Mon, 2 Nov 2026 09:29:00 +0000\r\n" + \
        (from_ or b"From: Eve <eve@customer.example>\r\n") + b"To: support@example.com\r\n" + \
        b"Cc: =?utf-8?q?Wendy=0D=0ABcc=3A_victim6=40evil=2Eexample?= <wendy@customer.example>\r\n" + subject + \
        b"Message-ID: <inj-" + label.replace(" ", "-").encode() + b"@customer.example>\r\n" + \
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    r = ingest(app, raw, mail_from="eve@customer.example")
    assert r.outcome == "ticket", r.trace
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        bob = Directory(s, app.clock).contact("bob@example.com")
        t.add_comment(t.get(1), author=bob, author_email=bob.email, body="Answer", source="cli")
    deliver_due(app)
    # the acknowledgement to Eve and (Cc'd by authenticated Eve) Wendy, the staff notice, the answer to both
    expected = ["bob@example.com", "eve@customer.example", "eve@customer.example", "wendy@customer.example",
                "wendy@customer.example"]
    assert to_whom(sink) == expected
    for m in sink.received:
        msg = parse(m.data)
        assert msg.get_all("Bcc") is None and msg.get_all("X") is None
        assert len(msg.get_all("To")) == 1 and len(msg.get_all("Subject")) == 1
        shown = {a.lower() for _, a in getaddresses([str(v) for k in ("To", "Cc") for v in msg.get_all(k) or []])}
        assert shown <= {"bob@example.com", "eve@customer.example", "wendy@customer.example"}, shown
        # a display name may still *show* the attempted text, quoted, but it never becomes a header line
        assert b"\nBcc" not in m.data and b"\nX:" not in m.data and b"\nTo: victim" not in m.data


# Rejected senders --------------------------------------------------------------------------------------------
def test_rejected_sender_gets_one_polite_notice_per_day(make_app, sink, clock):
    app = make_app(gateway={"unknown_senders": "reject"}, outbound=relay(sink.port))
    for i in range(3):
        assert ingest(app, make_mail(sender="stranger@elsewhere.example", subject=f"hi {i}")).outcome == "rejected"
    deliver_due(app)
    assert to_whom(sink) == ["stranger@elsewhere.example"]
    notice = parse(sink.received[0].data)
    assert str(notice["Auto-Submitted"]) == "auto-replied" and notice["Reply-To"] is None
    clock.advance(hours=25)
    ingest(app, make_mail(sender="stranger@elsewhere.example", subject="again"))
    deliver_due(app)
    assert len(sink.received) == 2


# Operator switches and templates ------------------------------------------------------------------------------
def test_events_can_be_switched_off(make_app, sink):
    app = make_app(outbound=relay(sink.port), notifications={"ticket_created": False, "staff_new_ticket": False})
    add_staff(app)
    ingest(app, make_mail())
    assert outbox(app) == []


def test_outbound_disabled_registers_no_listener(make_app):
    from gateway.outbound import notifier_of

    app = make_app(outbound={"enabled": False})
    assert notifier_of(app) is None
    ingest(app, make_mail())
    assert outbox(app) == []


def test_without_cc_each_copy_names_only_its_recipient(make_app, sink):
    app = make_app(outbound=relay(sink.port), notifications={"cc_watchers": False}, authentication=TRUST_MX)
    add_staff(app)
    ingest(app, make_mail(cc="carol@customer.example, dave@customer.example", headers=authenticated()))
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        bob = Directory(s, app.clock).contact("bob@example.com")
        t.add_comment(t.get(1), author=bob, author_email=bob.email, body="Answer", source="cli")
    n = len(outbox(app))
    deliver_due(app)
    for m in sink.received:
        msg = parse(m.data)
        assert msg["Cc"] is None
        assert [a for _, a in getaddresses([str(msg["To"])])] == m.rcpt_tos
    assert n == 7  # ack to alice, carol and dave, staff notice, comment to alice, carol and dave


def test_status_and_assignment_notifications(make_app, sink):
    app = make_app(outbound=relay(sink.port), authentication=TRUST_MX)
    add_staff(app)
    ingest(app, make_mail(cc="carol@customer.example", headers=authenticated()))
    deliver_due(app)
    n = len(sink.received)
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        bob = Directory(s, app.clock).contact("bob@example.com")
        t.change(t.get(1), by=bob, assignee=bob)  # bob assigns himself: no mail to himself
        t.change(t.get(1), by=bob, status="resolved")
    deliver_due(app)
    assert to_whom(sink, n) == ["alice@customer.example", "carol@customer.example"]
    msg = for_rcpt(sink, "alice@customer.example", n)[0]
    assert "resolved" in str(msg["Subject"]) and "[#1]" in str(msg["Subject"])
    n = len(sink.received)
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        dir_ = Directory(s, app.clock)
        eve = dir_.add_contact("eve@example.com", name="Eve Staff", staff=True)
        t.change(t.get(1), by=dir_.contact("bob@example.com"), assignee=eve)
        t.add_comment(t.get(1), author=dir_.contact("bob@example.com"), author_email="bob@example.com",
                      body="Secret remark", internal=True, source="cli")
    deliver_due(app)
    assert to_whom(sink, n) == ["eve@example.com", "eve@example.com"]  # assignment + internal note


def test_operator_template_override(make_app, sink, tmp_path):
    d = tmp_path / "tpl"
    d.mkdir()
    (d / "ticket_created.subject.j2").write_text("Thanks, {{ recipient.name }}!\n")
    app = make_app(outbound=relay(sink.port), notifications={"template_dir": str(d)})
    ingest(app, make_mail())
    deliver_due(app)
    assert str(parse(sink.received[0].data)["Subject"]) == "[#1] Thanks, Alice Customer!"


def test_missing_template_variable_stops_start_up(make_app, tmp_path):
    from gateway.config import ConfigError

    d = tmp_path / "tpl"
    d.mkdir()
    (d / "comment.txt.j2").write_text("{{ comment.bodyy }}\n")
    with pytest.raises(ConfigError, match="comment"):
        make_app(notifications={"template_dir": str(d)})


def test_maildir_is_the_default(make_app, tmp_path):
    import mailbox

    app = make_app()
    ingest(app, make_mail())
    assert deliver_due(app).sent == 1
    box = mailbox.Maildir(str(app.config.data_dir / "outbox-maildir"), create=False)
    msgs = list(box)
    assert len(msgs) == 1 and "[#1]" in msgs[0]["Subject"] and msgs[0]["X-Original-To"] == "alice@customer.example"


# Queue cheap, build at delivery ------------------------------------------------------------------------------
def test_rows_are_queued_unbuilt_and_built_once_on_first_claim(make_app, sink, clock):
    """The ingest transaction writes small rows (Message-ID and reply token fixed); the delivery round
    renders them, stores the bytes before sending, and an at-least-once resend sends those same bytes."""
    from sqlalchemy import update

    from gateway.outbound.sender import build_claimed, claim

    app = make_app(outbound=relay(sink.port, lease_seconds=60))
    add_staff(app)
    ingest(app, make_mail())
    with app.sessions() as s:
        rows = list(s.execute(select(OutboxMail.id, OutboxMail.raw, OutboxMail.subject, OutboxMail.message_id,
                                     OutboxMail.token, OutboxMail.params).order_by(OutboxMail.id)))
    assert len(rows) == 2 and all(r.raw is None and r.subject == "" and r.message_id for r in rows)
    assert rows[0].token and rows[0].params["ticket"]["status"] == "open"
    # a sender claims and builds, then dies before sending (nothing recorded, the lease runs out)
    token, ids = claim(app, clock(), 10)
    ready, failed = build_claimed(app, token, ids)
    assert failed == [] and sorted(ready) == sorted(r.id for r in rows)
    stored = {i: raw for i, (_, _, raw) in ready.items()}
    with app.sessions() as s:
        assert all(s.get(OutboxMail, i).raw == stored[i] for i in ids)
        assert all("[#1]" in s.get(OutboxMail, i).subject for i in ids)
    # the ticket changes meanwhile: the resend is still byte for byte what was built
    with app.sessions() as s, s.begin():
        s.execute(update(Ticket).values(subject="Something else entirely"))
    clock.advance(seconds=61)
    assert deliver_due(app).sent == 2
    assert sorted(m.data for m in sink.received) == sorted(stored.values())
    ack = for_rcpt(sink, "alice@customer.example")[0]
    assert str(ack["Message-ID"]).strip("<>") == rows[0].message_id


def test_a_row_that_cannot_be_built_fails_with_the_reason(make_app, sink, tmp_path):
    """A template broken after the start (the check passed) fails its rows at delivery, visibly; the round
    goes on with the other rows and a fixed template plus `outbox retry` sends it."""
    from gateway.outbound.sender import retry

    d = tmp_path / "tpl"
    d.mkdir()
    (d / "staff_new_ticket.txt.j2").write_text("New ticket {{ ticket.tag }}\n")
    app = make_app(outbound=relay(sink.port), notifications={"template_dir": str(d)})
    add_staff(app)
    ingest(app, make_mail())
    (d / "staff_new_ticket.txt.j2").write_text("New ticket {{ ticket.tagg }}\n")
    app.listeners[-1].templates._cache.clear()  # as a freshly started process would read it
    c = deliver_due(app)
    assert (c.sent, c.failed) == (1, 1)
    assert to_whom(sink) == ["alice@customer.example"]
    bad = outbox(app, event="staff_new_ticket")[0]
    assert bad.status == "failed" and "staff_new_ticket.txt.j2" in bad.last_error and "tagg" in bad.last_error
    assert deliver_due(app).claimed == 0  # failed rows stay failed
    (d / "staff_new_ticket.txt.j2").write_text("New ticket {{ ticket.tag }}\n")
    app.listeners[-1].templates._cache.clear()
    retry(app, bad.id)
    assert deliver_due(app).sent == 1
    assert for_rcpt(sink, "bob@example.com")[0].get_body(("plain",)).get_content().startswith("New ticket [#1]")


def test_template_check_stamp(make_app, tmp_path, capsys):
    """The full sample render runs when the template sources changed since the last successful check (and
    always when forced: serve, outbox flush, check-config); otherwise a start only hashes the sources."""
    import argparse

    from gateway.cli.admin import check_config
    from gateway.config import ConfigError
    from gateway.exitcodes import EX_CONFIG
    from gateway.outbound import STAMP_FILE, check_app_templates, check_templates, notifier_of
    from gateway.sla import template_samples as sla_samples

    d = tmp_path / "tpl"
    d.mkdir()
    (d / "comment.txt.j2").write_text("{{ comment.body }}\n")
    app = make_app(notifications={"template_dir": str(d)})
    stamp = app.config.data_dir / STAMP_FILE
    assert notifier_of(app).templates.checked and stamp.is_file()
    again = make_app(notifications={"template_dir": str(d)})
    assert not notifier_of(again).templates.checked  # same sources: not rendered at this start
    check_app_templates(again)  # forced (serve, outbox flush)
    assert notifier_of(again).templates.checked
    (d / "sla_response_breach.txt.j2").write_text("{{ sla.deadlin }}\n")  # an SLA template is checked too
    with pytest.raises(ConfigError, match="sla_response_breach"):
        make_app(notifications={"template_dir": str(d)})
    with pytest.raises(ConfigError, match="sla_response_breach"):
        check_templates(app.config, extra=sla_samples(app.config))
    assert check_config(argparse.Namespace(example=False), app.config) == EX_CONFIG  # check-config says so
    assert "sla_response_breach" in capsys.readouterr().err
    (d / "sla_response_breach.txt.j2").unlink()
    make_app(notifications={"template_dir": str(d)})
    assert not notifier_of(make_app(notifications={"template_dir": str(d)})).templates.checked
