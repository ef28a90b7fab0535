"""serve's threading in two steps (gateway.engine.Engine.stage / run_staged): the next batch is read and
prepared while the write transaction of the one before runs, so staging must not wait for the write lock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from mails import make_mail
from servehelp import config_for
from sqlalchemy import select, text

from gateway.app import build_app
from gateway.engine import Engine, start_worker
from gateway.envelope import Envelope
from gateway.models import InboundMail
from gateway.service import MIN_SAMPLE, Notifier, Service, WriteGate, thread_gate


@contextlib.contextmanager
def _with_worker(config: Any) -> Iterator[Any]:
    """The app of this configuration with its preparation worker (as serve starts it), closed after."""
    app = build_app(config)
    app.ahead = start_worker(config, context="exec")
    try:
        yield app
    finally:
        app.ahead.close()
        app.close()


def _stored(intake: Any, tag: str, n: int) -> list[int]:
    """n new conversations stored (not threaded), each from its own sender: their ids."""
    env = Envelope(mail_from="a@customer.example", rcpt_tos=("support@example.com",), source="smtp")
    return [intake.store(make_mail(subject=f"{tag} {i}", sender=f"S{i} <s{i}@customer.example>",
                                   message_id=f"<{tag}{i}@customer.example>"), env) for i in range(n)]


def test_a_batch_is_staged_while_another_transaction_holds_the_write_lock(tmp_path, db_url) -> None:
    """Stage (read + prepare) while a writer holds the lock (on SQLite every session begins IMMEDIATE: a staging
    read through a session would wait for the whole busy timeout); then the staged run threads the batch, its try
    counted, with the same outcomes as `thread`."""
    config = config_for(tmp_path, db_url, database={"url": db_url, "busy_timeout_ms": 20000})
    app = build_app(config)
    app.ahead = start_worker(config, context="exec")
    try:
        intake = app.intake()
        ids = _stored(intake, "staged", 3)
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


def test_staged_ahead_prepares_the_next_batch_and_lets_go_of_what_it_did_not_run(tmp_path, sqlite_url) -> None:
    """StagedAhead (the IMAP poller's threading): told the next batch, it has it staged (read and prepared) while
    this one runs; a call for other mails drops what was staged ahead, and so does discard(): those mails are
    the engine's again (another thread of it, or the sweep, threads them). Outcomes as `Engine.thread` has them,
    each try counted once."""
    from gateway.engine import StagedAhead

    with _with_worker(config_for(tmp_path, sqlite_url)) as app:
        intake = app.intake()
        engine = Engine(app, intake)
        ids = _stored(intake, "ahead", 8)
        threader = StagedAhead(engine)
        threader.then(ids[2:4])
        assert [(r.mail_id, r.outcome) for r in threader(ids[0:2])] == [(i, "ticket") for i in ids[0:2]]
        ahead = threader._ahead
        assert ahead is not None and ahead[0] == ids[2:4]
        assert sorted(ahead[1].result(timeout=60).prepared) == ids[2:4]  # prepared ahead
        assert engine.stage(ids[2:4]).ids == []  # the engine's until they ran
        assert [(r.mail_id, r.outcome) for r in threader(ids[2:4])] == [(i, "ticket") for i in ids[2:4]]
        threader.then(ids[4:6])
        assert [r.mail_id for r in threader([ids[6]])] == [ids[6]]
        threader(ids[7:8])  # not the mails staged ahead: they are dropped
        assert threader._ahead is None
        threader.then(ids[4:6])
        threader([ids[7]])  # threaded already: its recorded outcome
        threader.discard()
        assert threader._ahead is None and not engine._busy
        assert [(r.mail_id, r.outcome) for r in engine.thread(ids[4:6])] == [(i, "ticket") for i in ids[4:6]]
        with app.sessions() as s:
            assert list(s.scalars(select(InboundMail.attempts).where(InboundMail.id.in_(ids))
                                  .order_by(InboundMail.id))) == [1] * 8


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
