"""serve's threading in two steps (gateway.engine.Engine.stage / run_staged): the next batch is read and
prepared while the write transaction of the one before runs, so staging must not wait for the write lock."""

from __future__ import annotations

import time

from mails import make_mail
from servehelp import config_for
from sqlalchemy import select, text

from gateway.app import build_app
from gateway.engine import Engine, start_worker
from gateway.envelope import Envelope
from gateway.models import InboundMail
from gateway.service import MIN_SAMPLE, Notifier, Service, WriteGate, thread_gate


def test_a_batch_is_staged_while_another_transaction_holds_the_write_lock(tmp_path, db_url) -> None:
    """Stage (read + prepare) while a writer holds the lock (on SQLite every session begins IMMEDIATE: a staging
    read through a session would wait for the whole busy timeout); then the staged run threads the batch, its try
    counted, with the same outcomes as `thread`."""
    config = config_for(tmp_path, db_url, database={"url": db_url, "busy_timeout_ms": 20000})
    app = build_app(config)
    app.ahead = start_worker(config, context="exec")
    try:
        intake = app.intake()
        env = Envelope(mail_from="a@customer.example", rcpt_tos=("support@example.com",), source="smtp")
        ids = [intake.store(make_mail(subject=f"staged {i}", sender=f"S{i} <s{i}@customer.example>",
                                      message_id=f"<staged{i}@customer.example>"), env) for i in range(3)]
        engine = Engine(app, intake)
        writer = app.sessions()
        writer.begin()
        writer.execute(text("UPDATE inbound_mail SET attempts = attempts WHERE id = :i"), {"i": ids[0]})
        try:
            t = time.monotonic()
            staged = engine.stage(ids)
            took = time.monotonic() - t
        finally:
            writer.rollback()
            writer.close()
        assert took < 10, took  # not the busy timeout (20 s)
        assert sorted(staged.prepared) == ids and sorted(staged.raws) == ids  # read and prepared ahead
        assert engine.stage(ids).ids == []  # staged mails are this engine's until they ran
        results = engine.run_staged(staged)
        assert [(r.mail_id, r.outcome) for r in results] == [(i, "ticket") for i in ids]
        with app.sessions() as s:
            assert list(s.scalars(select(InboundMail.attempts).where(InboundMail.id.in_(ids)))) == [1, 1, 1]
        assert [(r.mail_id, r.outcome) for r in engine.thread(ids)] == [(i, "ticket") for i in ids]  # recorded
    finally:
        app.ahead.close()
        app.close()


def test_staged_batch_runs_a_mail_tried_before_alone_and_gives_up_after_max_tries(tmp_path, sqlite_url) -> None:
    from gateway.engine import MAX_TRIES

    app = build_app(config_for(tmp_path, sqlite_url))
    try:
        intake = app.intake()
        env = Envelope(mail_from="a@customer.example", rcpt_tos=("support@example.com",), source="smtp")
        ids = [intake.store(make_mail(subject=f"m {i}", sender=f"S{i} <s{i}@customer.example>",
                                      message_id=f"<m{i}@customer.example>"), env) for i in range(4)]
        with app.sessions() as s, s.begin():
            s.get(InboundMail, ids[1]).attempts = 1          # tried once, no outcome: alone
            s.get(InboundMail, ids[2]).attempts = MAX_TRIES  # no outcome after MAX_TRIES tries: given up
        staged = Engine(app, intake).stage(ids)
        assert staged.parts() == [[ids[1]], [ids[2]], [ids[0], ids[3]]]
        assert ids[2] not in staged.raws  # not read for running
        results = {r.mail_id: r for r in Engine(app, intake).run_staged(staged)}
        assert results[ids[2]].outcome == "quarantined"
        assert results[ids[2]].reason == f"over budget: no outcome after {MAX_TRIES} tries"
        assert [results[i].outcome for i in (ids[0], ids[1], ids[3])] == ["ticket"] * 3
    finally:
        app.close()


def test_write_gate_time_per_mail_is_learnt_from_transactions_of_several_mails(tmp_path, sqlite_url) -> None:
    """A transaction of one or two mails (a steady trickle, threaded as it comes) is mostly its commit: it must
    not read as the cost of each mail (threading would think it cannot keep pace and wait)."""
    svc = Service(config_for(tmp_path, sqlite_url), notifier=Notifier({}), handle_signals=False)
    svc.gate = WriteGate(True)
    before = svc.thread_seconds
    with thread_gate(svc, MIN_SAMPLE - 1)():
        time.sleep(0.3)
    assert svc.thread_seconds == before
    with thread_gate(svc, MIN_SAMPLE)():
        time.sleep(0.3)
    assert svc.thread_seconds > before  # 0.9 * before + 0.1 * (0.3 / MIN_SAMPLE)
