"""A reply threaded before its original (both stored, the original not threaded yet) waits for it and becomes its
comment (handlers/wait.py), on SQLite with the preparation worker: in one batch (the reply stored first), in two
batches run in the wrong order, and a real `serve` taking both over SMTP in the wrong order. Bounded: a reply to
a quarantined mail does not wait, and one whose original never gets threaded waits at most
gateway.reply_wait_seconds. The same across two instances on PostgreSQL: tests/integration/test_scaleout.py."""

from __future__ import annotations

import logging
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

from mails import make_mail
from servehelp import Running, config_for
from sqlalchemy import func, select

from gateway.app import build_app
from gateway.engine import Engine, start_worker
from gateway.envelope import Envelope
from gateway.models import Comment, InboundMail, Ticket

ENV = Envelope(mail_from="alice@customer.example", rcpt_tos=("support@example.com",), source="smtp")
ORIGINAL = "<original@customer.example>"


def original() -> bytes:
    return make_mail(subject="Printer on fire", message_id=ORIGINAL)


def reply(n: int = 1) -> bytes:
    return make_mail(subject="Re: Printer on fire", message_id=f"<reply{n}@customer.example>", in_reply_to=ORIGINAL,
                     references=ORIGINAL, body=f"Still burning ({n}).\n")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def counts(app) -> tuple[int, int]:
    with app.sessions() as s:
        return (int(s.scalar(select(func.count()).select_from(Ticket)) or 0),
                int(s.scalar(select(func.count()).select_from(Comment)) or 0))


def row(app, mail_id: int) -> InboundMail:
    with app.sessions() as s:
        m = s.get(InboundMail, mail_id)
        assert m is not None
        s.expunge(m)
        return m


def test_reply_stored_first_in_one_batch_becomes_the_originals_comment(tmp_path, sqlite_url) -> None:
    config = config_for(tmp_path, sqlite_url)
    app = build_app(config)
    app.ahead = start_worker(config, context="exec")
    try:
        intake = app.intake()
        r, o = intake.store_many([(reply(), ENV), (original(), ENV)])
        assert r < o
        results = {x.mail_id: x for x in Engine(app, intake).thread([r, o])}
        assert results[o].outcome == "ticket" and results[r].outcome == "comment"
        assert results[r].ticket_number == results[o].ticket_number
        trace = row(app, r).trace
        assert f"wait: waiting for {ORIGINAL} (mail {o}), stored but not threaded yet" in trace
        assert row(app, r).attempts == 1  # waiting was not a try
        assert counts(app) == (1, 1)
    finally:
        app.ahead.close()
        app.close()


def test_reply_in_an_earlier_batch_waits_and_is_threaded_after_it(tmp_path, sqlite_url) -> None:
    clock = Clock()
    config = config_for(tmp_path, sqlite_url)
    app = build_app(config, clock=clock)
    app.ahead = start_worker(config, context="exec")
    try:
        intake = app.intake()
        engine = Engine(app, intake)
        o, r = intake.store_many([(original(), ENV), (reply(), ENV)])
        clock.now += timedelta(seconds=3)
        staged_o, staged_r = engine.stage([o]), engine.stage([r])
        [waited] = engine.run_staged(staged_r)  # the later batch first (another worker took it)
        assert (waited.outcome, waited.retry_in, waited.fresh) == ("received", 3.0, False)  # retried at 6 s of age
        assert row(app, r).attempts == 0 and row(app, r).outcome == "received"
        [first] = engine.run_staged(staged_o)
        [second] = engine.thread([r])
        assert (first.outcome, second.outcome) == ("ticket", "comment")
        assert second.ticket_number == first.ticket_number and counts(app) == (1, 1)
    finally:
        app.ahead.close()
        app.close()


def test_waiting_is_bounded(tmp_path, sqlite_url) -> None:
    """A reply naming a quarantined mail does not wait; one naming a mail that is never threaded waits at most
    gateway.reply_wait_seconds from its arrival, then opens a ticket as before."""
    clock = Clock()
    app = build_app(config_for(tmp_path, sqlite_url, gateway={"reply_wait_seconds": 60}), clock=clock)
    try:
        intake = app.intake()
        engine = Engine(app, intake)
        o, r = intake.store_many([(original(), ENV), (reply(), ENV)])
        with app.sessions() as s, s.begin():  # the original: held by an admin, never threaded
            s.get(InboundMail, o).outcome = "quarantined"
        [res] = engine.thread([r])
        assert res.outcome == "ticket"
        o2 = intake.store(make_mail(subject="Other", message_id="<other@customer.example>"), ENV)
        r2 = intake.store(make_mail(subject="Re: Other", in_reply_to="<other@customer.example>"), ENV)
        # the other original stays unthreaded (stuck: another process holds it); the reply waits, then goes on
        for _ in range(3):
            assert engine.thread([r2])[0].outcome == "received"
            clock.now += timedelta(seconds=25)
        [res] = engine.thread([r2])
        assert res.outcome == "ticket"
        assert any("is still not threaded after 60 s: threaded without it" in t for t in row(app, r2).trace)
        assert row(app, o2).outcome == "received"
    finally:
        app.close()


def test_serve_queues_a_waiting_reply_again_by_itself(tmp_path, sqlite_url, caplog) -> None:
    """serve: the reply is threaded first and waits; once the original is threaded, the reply is queued again by
    the worker that ran it (Result.retry_in), not left to the sweep (pending_sweep_seconds 3600 here)."""
    caplog.set_level(logging.INFO, logger="gateway.service")
    config = config_for(tmp_path, sqlite_url, serve={"hostname": "gw.test", "pending_sweep_seconds": 3600})
    with closing(build_app(config)) as before:  # stored before the start: the start-up sweep threads it
        before.intake().store(make_mail(subject="Stored before the start"), ENV)
    running = Running(config)
    try:
        service, app = running.service, running.app
        assert service._loop is not None
        deadline = time.monotonic() + 60
        while "sweep: threaded 1 stored mail(s)" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "sweep: threaded 1 stored mail(s)" in caplog.text  # the start-up sweep is over: nothing else
        # threads these two but the queue
        o, r = app.intake().store_many([(original(), ENV), (reply(), ENV)])  # stored, nobody queued them
        service._loop.call_soon_threadsafe(service.enqueue, r)

        def waited() -> bool:
            return any(t.startswith("wait: ") for t in row(app, r).trace or [])

        while not waited() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waited() and row(app, r).outcome == "received"
        service._loop.call_soon_threadsafe(service.enqueue, o)
        while counts(app) != (2, 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counts(app) == (2, 1)
        assert (row(app, o).outcome, row(app, r).outcome) == ("ticket", "comment")
        assert row(app, r).ticket_id == row(app, o).ticket_id
    finally:
        running.stop()
