"""Outbox delivery with SMTP command pipelining (RFC 2920, issue 14.3): against a relay that announces PIPELINING,
one write per mail (its content and the next mail's envelope together) instead of smtplib's four, the same mails
on the wire, and the same results as one mail at a time: refusals fail or defer the one mail, a relay closing the
connection defers the rest of the round, nothing is lost or sent twice. A real aiosmtpd relay on loopback."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from gateway.models import OutboxMail
from gateway.outbound import deliver_due
from gateway.outbound.sender import SMTPTransport
from gateway.outbound.sink import Sink
from gateway.tickets import Directory, Tickets

WATCHERS = [f"w{i}@customer.example" for i in range(10)]


def relay(port: int, **extra: Any) -> dict[str, Any]:
    return {"relay_host": "127.0.0.1", "relay_port": port, "relay_security": "none", **extra}


def comment_to_watchers(app: Any, watchers: list[str], body: str = "We are on it.\n") -> None:
    with app.sessions() as s, s.begin():
        d = Directory(s, app.clock)
        t = Tickets(s, clock=app.clock, listeners=[])  # no acknowledgement: only the comment's notifications
        ticket = t.create(subject="Printer on fire", reporter=d.add_contact("rita@customer.example"))
        for w in watchers:
            t.add_watcher(ticket, d.add_contact(w), vouched="added by staff")
        staff = d.add_contact("sam@example.com", name="Sam", staff=True)
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        ticket = t.get(1)
        assert ticket is not None
        t.add_comment(ticket, author=staff, author_email=staff.email, body=body, source="cli")


def rows(app: Any) -> list[OutboxMail]:
    with app.sessions() as s:
        return list(s.scalars(select(OutboxMail).options(undefer(OutboxMail.raw)).order_by(OutboxMail.id)))


class Writes:
    """The client socket of a relay connection, counting what is written to it."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def counted_transport(app: Any) -> tuple[SMTPTransport, Writes]:
    transport = SMTPTransport(app.config.outbound, app.config.base_dir)
    conn = transport.conn = transport.connect()
    transport.used = time.monotonic()
    writes = Writes(conn.sock)
    conn.sock = writes  # type: ignore[assignment]
    return transport, writes


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_pipelined_mails_take_one_write_each_and_arrive_as_stored(make_app, pipelining):
    with Sink(pipelining=pipelining) as sink:
        app = make_app(outbound=relay(sink.port))
        comment_to_watchers(app, WATCHERS)
        transport, writes = counted_transport(app)
        try:
            c = deliver_due(app, transport=transport)
        finally:
            transport.close()
        n = len(WATCHERS) + 1  # the reporter too
        assert (c.claimed, c.sent, c.failed, c.deferred) == (n, n, 0, 0)
        stored = rows(app)
        assert [r.status for r in stored] == ["sent"] * n
        # every mail at the relay is the row's envelope and stored bytes, once
        assert sorted((m.mail_from, m.rcpt_tos[0], hashlib.sha256(m.data).hexdigest()) for m in sink.received) == \
            sorted((r.envelope_from, r.recipient, hashlib.sha256(r.raw or b"").hexdigest()) for r in stored)
        mail_writes = [w for w in writes.writes if w.lower() not in (b"noop\r\n", b"quit\r\n")]  # not mail
        if pipelining:  # the first envelope, then each mail's content with the next envelope
            assert len(mail_writes) == n + 1, [w[:40] for w in mail_writes]
            assert mail_writes[0].count(b"\r\n") == 3 and mail_writes[0].endswith(b"data\r\n")
            assert all(w.endswith(b"data\r\n") for w in mail_writes[1:-1])
            assert mail_writes[-1].endswith(b"\r\n.\r\n")
        else:  # smtplib: MAIL, RCPT, DATA, the content
            assert len(mail_writes) == 4 * n


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_refused_recipients_fail_or_wait_and_the_others_go(make_app, clock, pipelining):
    gone, full = WATCHERS[2], WATCHERS[5]
    with Sink(reject={gone: 550, full: 451}, pipelining=pipelining) as sink:
        app = make_app(outbound=relay(sink.port))
        comment_to_watchers(app, WATCHERS)
        c = deliver_due(app)
        n = len(WATCHERS) + 1
        assert (c.sent, c.failed, c.deferred) == (n - 2, 1, 1)
        by = {r.recipient: r for r in rows(app)}
        assert by[gone].status == "failed" and by[gone].last_error == \
            f"recipient {gone} refused: 550 5.1.1 no such user"
        assert by[full].status == "queued" and by[full].last_error == \
            f"recipient {full} refused: 451 4.2.0 try later" and by[full].next_attempt_at > clock()
        assert sorted(m.rcpt_tos[0] for m in sink.received) == sorted(set(by) - {gone, full})
        assert all(r.status == "sent" for k, r in by.items() if k not in (gone, full))
        del sink.reject[full]
        clock.advance(hours=1)
        assert deliver_due(app).sent == 1
        assert sorted(m.rcpt_tos[0] for m in sink.received) == sorted(set(by) - {gone})


class ClosingRelay(Sink):
    """Answers the DATA of one recipient's mail with 421 (closing the connection), once."""

    def __init__(self, closing_for: str) -> None:
        super().__init__(pipelining=True)
        self.closing_for = closing_for

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.closing_for in envelope.rcpt_tos:
            self.closing_for = ""
            return "421 4.3.2 shutting down"
        return await super().handle_DATA(server, session, envelope)


def test_a_relay_closing_midway_defers_the_rest_and_loses_nothing(make_app, clock):
    with ClosingRelay(WATCHERS[4]) as sink:
        app = make_app(outbound=relay(sink.port))
        comment_to_watchers(app, WATCHERS)
        order = [r.recipient for r in rows(app)]
        k = order.index(WATCHERS[4])
        c = deliver_due(app)
        assert (c.sent, c.failed, c.deferred) == (k, 0, len(order) - k)
        assert [m.rcpt_tos[0] for m in sink.received] == order[:k]
        late = [r for r in rows(app) if r.status == "queued"]
        assert [r.recipient for r in late] == order[k:]
        assert "421 4.3.2 shutting down" in (late[0].last_error or "")
        clock.advance(hours=1)
        assert deliver_due(app).sent == len(order) - k  # a new connection
        ids = [m.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for m in sink.received]
        assert len(ids) == len(order) == len(set(ids))  # each mail once
        assert {r.status for r in rows(app)} == {"sent"}
