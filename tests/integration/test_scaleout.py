"""Scale-out (issue 14.5): two and three `serve` processes on one PostgreSQL database, each with its own SMTP
port and data directory (tests/scaleout.py), the SMTP load spread over them, one IMAP mailbox on a real Dovecot
shared by all, the outbox and the SLA sweep running in every instance, outgoing mail to one SMTP sink.

Counted exactly at the end: tickets, comments, inbound mails (none left `received`, none twice), every
notification queued once and at the sink once (by Message-ID), every SLA escalation claimed once and mailed
once. Replies go to another instance than the one that took the ticket in, to the reply address the first one
signed (the secret is shared), so threading across instances is tested too."""

from __future__ import annotations

import email
import threading
import time
from collections import Counter
from email import policy
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid

import pytest
from conftest import _pg_url, drop_pg_database, new_pg_database
from mails import TRUST_MX, authenticated, make_mail
from scaleout import Cluster, send_many
from sqlalchemy import func, select

from gateway.db import transaction
from gateway.models import Comment, InboundMail, OutboxMail, SlaEscalation, Ticket
from gateway.outbound.sink import Sink
from gateway.tickets import Directory

pytestmark = [pytest.mark.pg, pytest.mark.timeout(300)]

SUPPORT, URGENT = "support@example.com", "urgent@example.com"
STAFF, LEAD = "bob@example.com", "lead@example.com"
WATCHERS = [f"w{i}@partner.example" for i in range(4)]
URGENT_TICKETS = 4   # high priority (the route of urgent@): an SLA policy with 1 minute to respond
SMTP_TICKETS = 20    # plus the urgent ones; each Cc's a watcher (vouched: the sender is authenticated)
IMAP_TICKETS = 8     # appended to the one shared mailbox
SLA_RESPONSE_MINUTES = 1


@pytest.fixture
def pg_url():
    name = new_pg_database()
    yield _pg_url(name)
    drop_pg_database(name)


def wait_for(cond, timeout: float) -> bool:
    """Whether `cond()` came true within `timeout` seconds (asked every 0.2 s)."""
    end = time.monotonic() + timeout
    while not (ok := bool(cond())) and time.monotonic() < end:
        time.sleep(0.2)
    return ok


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def reply(original: EmailMessage, sender: str, body: str) -> tuple[str, bytes]:
    """A mail client's Reply to a notification: to its Reply-To (the signed reply address), threaded."""
    to = getaddresses([str(original["Reply-To"])])[0][1]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = (str(original.get("References", "")) + " " + str(original["Message-ID"])).strip()
    for k, v in authenticated().items():
        msg[k] = v
    msg.set_content(body)
    return to, bytes(msg)


def spread(ports: list[int], jobs: list[list[tuple[str, list[str], bytes]]]) -> None:
    """Send job k over one SMTP connection to instance k (all instances at once)."""
    errors: list[BaseException] = []

    def run(port: int, mails: list[tuple[str, list[str], bytes]]) -> None:
        try:
            assert send_many(port, mails) == len(mails)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(port, job)) for port, job in zip(ports, jobs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


class Claims:
    """Holds the claims (session advisory locks, gateway.engine.CLAIM_LOCK_CLASS) that serve's workers and sweeps
    take before threading a stored mail, on the ids the next `n` stored mails get: while a claim is held, no
    instance threads that mail, as if another instance were threading it now (slowly). Deterministic, no timing."""

    def __init__(self, app, n: int) -> None:
        from sqlalchemy import text

        from gateway.engine import CLAIM_LOCK_CLASS

        self.lock_class = CLAIM_LOCK_CLASS
        self.conn = app.engine.connect()
        seq = self.conn.scalar(text("SELECT pg_get_serial_sequence('inbound_mail', 'id')"))
        nxt = int(self.conn.scalar(text(f"SELECT last_value + CASE WHEN is_called THEN 1 ELSE 0 END FROM {seq}")))
        self.held = set(range(nxt, nxt + n))
        for i in sorted(self.held):
            self.conn.execute(select(func.pg_advisory_lock(self.lock_class, i)))
        self.conn.commit()

    def release(self, ids) -> None:
        for i in sorted(self.held & set(ids)):
            self.conn.execute(select(func.pg_advisory_unlock(self.lock_class, i)))
            self.held.discard(i)
        self.conn.commit()

    def close(self) -> None:
        if not self.conn.closed:
            self.release(list(self.held))
            self.conn.close()


class Db:
    """Counts read from the shared database (an App of its own, like an operator's CLI)."""

    def __init__(self, app) -> None:
        self.app = app

    def count(self, model, *where) -> int:
        with self.app.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    def outcomes(self) -> Counter[str]:
        with self.app.sessions() as s:
            return Counter(dict(s.execute(select(InboundMail.outcome, func.count()).group_by(InboundMail.outcome))
                                .all()))

    def outbox(self) -> list[OutboxMail]:
        with self.app.sessions() as s:
            return list(s.scalars(select(OutboxMail).order_by(OutboxMail.id)))

    def escalations(self) -> list[SlaEscalation]:
        with self.app.sessions() as s:
            return list(s.scalars(select(SlaEscalation).order_by(SlaEscalation.id)))


# three instances (two were run too; they cost the suite another minute of its 15 and show nothing three do
# not: bench/bench_scaleout.py measures one, two and three)
@pytest.mark.parametrize("instances", [3])
def test_instances_share_the_load_and_lose_or_double_nothing(tmp_path, pg_url, dovecot, instances):
    from conftest import make_config

    from gateway.app import build_app

    app = build_app(make_config(tmp_path / "operator", pg_url))
    with transaction(app.sessions) as s:
        Directory(s, app.clock).add_contact(STAFF, name="Bob Staff", staff=True)
    db = Db(app)
    account = dovecot.account_config("shared", lease_seconds=5, address=SUPPORT)
    extra = {
        "gateway": {"addresses": [SUPPORT, URGENT]},
        "routes": [{"address": URGENT, "priority": "high"}],
        "authentication": TRUST_MX,
        "sla": {"sweep_seconds": 1, "policies": [{"name": "urgent", "response": SLA_RESPONSE_MINUTES,
                                                  "resolution": 600, "priorities": ["high"],
                                                  "escalate_to": [LEAD]}]},
        "imap": [account],
    }
    sink = Sink().start()
    cluster = Cluster(tmp_path, instances, pg_url, relay_port=sink.port, addresses=[SUPPORT, URGENT], extra=extra)
    claims: Claims | None = None
    try:
        ports = cluster.ports
        # 1. new tickets over SMTP, spread over the instances (the urgent ones first: their SLA clock runs); their
        # threading held back (Claims) until the follow-ups below were threaded
        claims = Claims(app, 4 * (URGENT_TICKETS + SMTP_TICKETS))
        reporters = [f"c{i}@customer.example" for i in range(URGENT_TICKETS + SMTP_TICKETS)]
        jobs: list[list[tuple[str, list[str], bytes]]] = [[] for _ in ports]
        for i, who in enumerate(reporters):
            to = URGENT if i < URGENT_TICKETS else SUPPORT
            raw = make_mail(sender=who, to=to, subject=f"case {i}", cc=WATCHERS[i % len(WATCHERS)],
                            body=f"Case {i} is broken.\n", headers=authenticated(),
                            message_id=f"<case{i}@customer.example>")
            jobs[i % len(ports)].append((who, [to], raw))
        spread(ports, jobs)
        with app.sessions() as s:
            originals = set(s.scalars(select(InboundMail.id)))
        assert len(originals) == len(reporters) and originals <= claims.held
        claims.release(claims.held - originals)  # only the originals stay held: "another instance threads them"
        # ... and a follow-up of each to the next instance, In-Reply-To the original: threaded before its original
        # (which another instance holds), it waits for it (handlers/wait.py) and becomes its comment
        jobs = [[] for _ in ports]
        for i, who in enumerate(reporters):
            to = URGENT if i < URGENT_TICKETS else SUPPORT
            raw = make_mail(sender=who, to=to, subject=f"Re: case {i}", in_reply_to=f"<case{i}@customer.example>",
                            references=f"<case{i}@customer.example>", body=f"Forgot to say: case {i} smokes.\n",
                            headers=authenticated())
            jobs[(i + 1) % len(ports)].append((who, [to], raw))
        spread(ports, jobs)
        followups = len(reporters)

        def waited() -> int:
            with app.sessions() as s:
                return sum(1 for trace in s.scalars(select(InboundMail.trace).where(InboundMail.id.not_in(originals)))
                           if any(t.startswith("wait: waiting for <case") for t in trace or []))

        assert wait_for(lambda: waited() == followups, 60), (waited(), db.outcomes(), cluster.logs())
        assert db.count(Ticket) == 0
        claims.close()  # the originals are threaded now (by a worker or a sweep), then their follow-ups
        # ... and new tickets into the one mailbox all instances list
        imap_reporters = [f"m{i}@imap.example" for i in range(IMAP_TICKETS)]
        dovecot.append_many([make_mail(sender=who, subject=f"imap case {i}", body=f"Mailbox case {i}.\n")
                             for i, who in enumerate(imap_reporters)])
        tickets = URGENT_TICKETS + SMTP_TICKETS + IMAP_TICKETS
        acks = (URGENT_TICKETS + SMTP_TICKETS) * 2 + IMAP_TICKETS  # reporter (+ the Cc'd watcher over SMTP)

        def acknowledged() -> dict[str, EmailMessage]:
            out = {}
            for r in list(sink.received):
                msg = parse(r.data)
                if r.rcpt_tos[0] in reporters + imap_reporters and "case" in str(msg["Subject"]):
                    out[r.rcpt_tos[0]] = msg
            return out

        assert wait_for(lambda: db.outcomes() == {"ticket": tickets, "comment": followups}
                        and len(acknowledged()) == tickets, 90), \
            (db.outcomes(), len(acknowledged()), cluster.logs())
        # 2. every reporter answers the acknowledgement: over SMTP at the next instance, or into the mailbox
        ack = acknowledged()
        jobs = [[] for _ in ports]
        for i, who in enumerate(reporters):
            to, raw = reply(ack[who], who, f"More on case {i}.\n")
            jobs[(i + 1) % len(ports)].append((who, [to], raw))
        spread(ports, jobs)
        dovecot.append_many([reply(ack[who], who, f"More on mailbox case {i}.\n")[1]
                             for i, who in enumerate(imap_reporters)])
        comments = followups + len(reporters) + len(imap_reporters)
        # notifications: acks; the staff notice of each new ticket; each comment to the watcher (SMTP ones: the
        # follow-up and the reply) and to staff (no assignee, no group: every staff member); SLA mails to the lead
        notices = acks + tickets + (followups + len(reporters) + comments)

        def escalated() -> bool:
            kinds = Counter(e.kind for e in db.escalations())
            return kinds == {"response_warning": URGENT_TICKETS, "response_breach": URGENT_TICKETS}

        def settled() -> bool:
            return (db.outcomes() == {"ticket": tickets, "comment": comments} and escalated()
                    and db.count(OutboxMail, OutboxMail.status != "sent") == 0)

        assert wait_for(settled, 60 * SLA_RESPONSE_MINUTES + 90), (db.outcomes(), db.escalations(), cluster.logs())
        time.sleep(3)  # every instance's outbox and SLA sweep run a few more rounds: nothing more may come
        codes = cluster.stop()
    finally:
        if claims is not None:
            claims.close()
        cluster.stop()
        sink.stop()
    assert codes == [0] * instances, (codes, cluster.logs())

    # tickets and comments: each exactly once
    assert db.count(Ticket) == tickets and db.count(Comment) == comments
    with app.sessions() as s:
        numbers = sorted(s.scalars(select(Ticket.number)))
        subjects = Counter(s.scalars(select(Ticket.subject)))
        per_ticket = Counter(s.scalars(select(Comment.ticket_id)))
    # unique numbers (PostgreSQL: a sequence, no lock between instances; a rolled-back try leaves a gap)
    assert len(set(numbers)) == tickets and numbers[0] >= 1
    assert all(n == 1 for n in subjects.values()), subjects
    # every follow-up and reply on its own ticket (over SMTP: the follow-up and the reply; IMAP: the reply)
    assert sorted(per_ticket.values()) == [1] * IMAP_TICKETS + [2] * len(reporters), per_ticket
    # inbound mail: every one stored once, none left `received`
    sent_in = tickets + comments
    assert db.count(InboundMail) == sent_in and db.outcomes() == {"ticket": tickets, "comment": comments}
    with app.sessions() as s:
        assert s.scalar(select(func.count(func.distinct(InboundMail.message_id)))) == sent_in
        transports = Counter(s.scalars(select(InboundMail.source)))
    assert transports == {"smtp": 3 * len(reporters), "imap": 2 * IMAP_TICKETS}, transports
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 2 * IMAP_TICKETS

    # escalations: one claim per (ticket, kind); the breach mailed to the lead once per ticket
    escalations = db.escalations()
    assert len({(e.ticket_id, e.kind, e.deadline) for e in escalations}) == len(escalations) == 2 * URGENT_TICKETS
    mailed_escalations = sum(len(e.recipients) for e in escalations if not e.suppressed)
    assert all(e.recipients == [LEAD] for e in escalations if e.kind == "response_breach")

    # notifications: each queued once, sent, and at the sink exactly once
    rows = db.outbox()
    assert all(r.status == "sent" for r in rows)
    assert len(rows) == notices + mailed_escalations, Counter(r.event for r in rows)
    at_sink = Counter(str(parse(r.data)["Message-ID"]).strip("<>") for r in sink.received)
    assert [m for m, n in at_sink.items() if n > 1] == []
    assert set(at_sink) == {r.message_id for r in rows}
    assert len(sink.received) == len(rows)
    assert Counter(r.recipient for r in rows if r.event == "comment") == Counter(
        [WATCHERS[i % len(WATCHERS)] for i in range(len(reporters))] * 2 + [STAFF] * comments)

    # the load was spread: every instance took mail in over SMTP and threaded some of it
    for x in cluster.instances:
        assert "transport=smtp" in x.text(), x.text()[-2000:]
    app.close()


def test_a_stored_mail_another_instance_threads_is_left_to_it(tmp_path, pg_url):
    """Engine.thread(skip_locked=True), what the workers and the sweep of `serve` use: a mail that another
    instance has claimed (its advisory lock) is neither counted, prepared nor run here, and not waited for."""
    from conftest import make_config

    from gateway.app import build_app
    from gateway.engine import Engine
    from gateway.envelope import Envelope

    a, b = build_app(make_config(tmp_path / "a", pg_url)), build_app(make_config(tmp_path / "b", pg_url))
    try:
        ids = [a.intake().store(make_mail(sender=f"s{i}@customer.example", subject=f"stored {i}"),
                                Envelope(f"s{i}@customer.example", (SUPPORT,), "smtp")) for i in range(3)]
        ea, eb = Engine(a), Engine(b)

        def attempts() -> list[int]:
            with a.sessions() as s:
                return list(s.scalars(select(InboundMail.attempts).where(InboundMail.id.in_(ids))
                                      .order_by(InboundMail.id)))

        with ea._claimed(ids[:2], True) as mine:  # instance a is threading the first two
            assert mine == ids[:2]
            started = time.monotonic()
            done = eb.thread(ids, skip_locked=True)
            assert time.monotonic() - started < 10
            assert [(r.mail_id, r.outcome) for r in done] == [(ids[2], "ticket")]
            assert attempts() == [0, 0, 1]
        done = eb.thread(ids, skip_locked=True)  # released: b takes them (the one threaded already is left out)
        assert [(r.mail_id, r.outcome) for r in done] == [(ids[0], "ticket"), (ids[1], "ticket")]
        assert attempts() == [1, 1, 1]
        assert Db(a).count(Ticket) == 3
    finally:
        a.close()
        b.close()


def test_a_reply_at_instance_b_waits_for_its_original_that_instance_a_threads(tmp_path, pg_url):
    """Two `serve` instances: the original goes to instance A over SMTP, and A is slow to thread it (the test holds
    the claim, the advisory lock, that A's workers and every sweep take before threading a mail: as if A were
    threading it now); the reply goes to instance B, which threads it first. The reply waits (handlers/wait.py)
    instead of opening a ticket of its own; once the original is threaded, it is its comment."""
    from conftest import make_config

    from gateway.app import build_app

    app = build_app(make_config(tmp_path / "operator", pg_url))
    db = Db(app)
    who = "alice@customer.example"
    original = make_mail(sender=who, subject="Printer on fire", message_id="<original@customer.example>")
    answer = make_mail(sender=who, subject="Re: Printer on fire", message_id="<reply@customer.example>",
                       in_reply_to="<original@customer.example>", references="<original@customer.example>")

    def mail(message_id: str) -> InboundMail | None:
        with app.sessions() as s:
            return s.scalar(select(InboundMail).where(InboundMail.message_id.in_(
                [message_id, f"<{message_id}>"])))

    cluster = Cluster(tmp_path, 2, pg_url, addresses=[SUPPORT])
    try:
        a, b = cluster.ports
        claims = Claims(app, 20)
        try:
            assert send_many(a, [(who, [SUPPORT], original)]) == 1  # 250: stored by A
            first = mail("original@customer.example")
            assert first is not None and first.id in claims.held and first.outcome == "received"
            claims.release(claims.held - {first.id})  # only the original stays claimed ("A threads it")
            assert send_many(b, [(who, [SUPPORT], answer)]) == 1

            def waited() -> bool:
                m = mail("reply@customer.example")
                return m is not None and any(t.startswith("wait: waiting for <original@customer.example>")
                                             for t in m.trace or [])

            assert wait_for(waited, 60), cluster.logs()
            reply_row = mail("reply@customer.example")
            assert reply_row is not None and reply_row.outcome == "received" and db.count(Ticket) == 0
        finally:
            claims.close()  # A is done with it: threaded now (by a worker or a sweep of either instance)
        assert wait_for(lambda: db.outcomes() == {"ticket": 1, "comment": 1}, 60), (db.outcomes(), cluster.logs())
        codes = cluster.stop()
    finally:
        cluster.stop()
    assert codes == [0, 0], cluster.logs()
    assert db.count(Ticket) == 1 and db.count(Comment) == 1
    done_first, done_reply = mail("original@customer.example"), mail("reply@customer.example")
    assert done_first is not None and done_reply is not None
    assert (done_first.outcome, done_reply.outcome) == ("ticket", "comment")
    assert done_reply.ticket_id == done_first.ticket_id
    app.close()
