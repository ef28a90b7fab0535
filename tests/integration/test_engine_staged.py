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
from gateway.service import Notifier, Service, WriteGate, thread_gate
from gateway.thread_policy import PRIOR


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


def test_what_threading_costs_is_learnt_from_its_transactions(tmp_path, sqlite_url) -> None:
    """A threading transaction (Engine.run_staged's turn at the gate) teaches the service what threading costs
    (gateway.thread_policy.CostModel; how the fixed part is told from the part per mail is tested there); a
    turn of Engine.thread (learn=False: it takes the gate twice per batch) does not, nor does anything on
    PostgreSQL (no write gate)."""
    svc = Service(config_for(tmp_path, sqlite_url), notifier=Notifier({}), handle_signals=False)
    assert svc.cost_model.costs(time.monotonic()) == PRIOR
    with thread_gate(svc, 1)():  # svc.gate is the disabled one of a service not running (PostgreSQL)
        time.sleep(0.05)
    svc.gate = WriteGate(True)
    with thread_gate(svc, 4, learn=False)():
        time.sleep(0.05)
    assert svc.cost_model.costs(time.monotonic()) == PRIOR
    with thread_gate(svc, 1, staged_cpu=0.05)():
        time.sleep(0.05)
    assert svc.cost_model.weight == 1  # one transaction, of one mail, that took 0.1 s of what arriving mail needs
    assert svc.cost_model.seconds == 3 * PRIOR.seconds(1)  # counted as at most three times what was expected
