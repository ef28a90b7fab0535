"""Unit tests for gateway.thread_policy: fixed clocks only (times are arguments; no sleeping, no monotonic())."""

from __future__ import annotations

import math

import pytest

from gateway.thread_policy import (
    HALF_LIFE,
    PRIOR,
    THREAD_BATCH,
    CostModel,
    Costs,
    arrival_rate,
    gate_need,
    may_thread,
    pace_batch,
)

T0 = 1000.0  # a fixed monotonic clock reading
SHARE = 0.75
# what the bench measured on the 2-core machine: a commit of about 10 ms, 4 ms a mail
MEASURED = Costs(per_txn=0.010, per_mail=0.004)


def decide(rate: float, *, costs: Costs = MEASURED, burst: bool = False, waited: float = 0.0,
           arriving: bool = True, single_writer: bool = True, defer: float = 30.0):
    return may_thread(single_writer=single_writer, arriving=arriving, rate=rate, costs=costs, share=SHARE,
                      batch=THREAD_BATCH, burst=burst, queued_at=T0 - waited, now=T0, defer=defer)


# The rule -------------------------------------------------------------------------------------------------
def test_a_steady_stream_threading_keeps_pace_with_is_threaded_at_once() -> None:
    # 50 mail/s: in transactions of up to 16 mails threading needs 50 x (0.010 / 16 + 0.004) = 23 % of the gate
    assert gate_need(50, MEASURED, THREAD_BATCH) == pytest.approx(0.23125)
    verdict = decide(50)
    assert verdict.thread and not verdict.burst
    assert decide(20).thread


def test_the_fixed_cost_of_small_transactions_does_not_make_a_stream_a_burst() -> None:
    """At 50 mail/s threading keeps up in transactions of two mails, which cost 12 ms a mail: judged by that
    (the rule before), 50 x 0.012 = 60 % of the gate, and with a dearer commit a burst. Judged by the batches
    it would get if it fell behind, it keeps pace."""
    dear_commit = Costs(per_txn=0.040, per_mail=0.004)
    assert 50 * dear_commit.seconds(2) / 2 > SHARE           # per mail in pairs: looks like a burst
    assert decide(50, costs=dear_commit).thread               # 50 x (0.040 / 16 + 0.004) = 32.5 %
    assert pace_batch(50, dear_commit, SHARE) == pytest.approx(50 * 0.040 / (SHARE - 50 * 0.004))


def test_a_burst_goes_first_until_its_mail_waited_defer_seconds() -> None:
    verdict = decide(215)  # a 1-client burst: 215 x 0.004625 = 99 % of the gate
    assert verdict.burst and not verdict.thread
    assert not decide(215, waited=29.9).thread
    later = decide(215, waited=30.0)
    assert later.thread and later.burst  # its turn came, still a burst
    assert decide(215, defer=0).thread   # defer_seconds 0: thread at once, always


def test_a_burst_ends_below_three_quarters_of_the_share() -> None:
    # 150 mail/s needs 69 %: not a burst coming from calm, still one coming from a burst (hysteresis)
    assert gate_need(150, MEASURED, THREAD_BATCH) == pytest.approx(0.69375)
    assert decide(150).thread
    assert not decide(150, burst=True).thread
    over = decide(110, burst=True)  # 51 %: over
    assert over.thread and not over.burst


def test_no_mail_arriving_or_several_writers_thread_at_once() -> None:
    quiet = decide(500, arriving=False, burst=True)
    assert quiet.thread and quiet.burst  # the verdict is kept for when mail arrives again
    assert decide(500, single_writer=False).thread


def test_no_batch_size_keeps_pace_when_the_mails_alone_need_the_share() -> None:
    assert pace_batch(200, MEASURED, SHARE) is None  # 200 x 0.004 = 80 % > 75 %
    assert pace_batch(1, MEASURED, SHARE) == 1.0


# The arrival rate -----------------------------------------------------------------------------------------
def test_the_arrival_rate_is_smoothed_but_a_clear_burst_counts_at_once() -> None:
    assert arrival_rate(50.0, 60.0, MEASURED, SHARE, THREAD_BATCH) == pytest.approx(53.5)
    # a sample of 200 mail/s needs 93 % > 75 %: it counts at once (senders that wait for each 250 would be
    # slowed down by threading before a smoothed rate noticed them)
    assert arrival_rate(10.0, 200.0, MEASURED, SHARE, THREAD_BATCH) == 200.0
    # 150 mail/s, 69 %, is smoothed
    assert arrival_rate(10.0, 150.0, MEASURED, SHARE, THREAD_BATCH) == pytest.approx(59.0)
    rate = 200.0
    for _ in range(5):  # back to a steady 50 mail/s within about two seconds (samples of 0.4 s)
        rate = arrival_rate(rate, 50.0, MEASURED, SHARE, THREAD_BATCH)
    assert rate < 70
    assert not may_thread(single_writer=True, arriving=True, rate=rate, costs=MEASURED, share=SHARE,
                          batch=THREAD_BATCH, burst=True, queued_at=T0, now=T0, defer=30).burst


# Learning the costs -------------------------------------------------------------------------------------------
def learn(model: CostModel, samples: list[tuple[int, float]], start: float = T0, step: float = 0.05) -> CostModel:
    for i, (n, t) in enumerate(samples):
        model = model.learn(n, t, start + i * step)
    return model


def test_nothing_learned_is_the_prior() -> None:
    assert CostModel().costs(T0) == PRIOR


def test_the_fixed_and_the_per_mail_part_are_told_apart() -> None:
    truth = Costs(per_txn=0.012, per_mail=0.003)
    model = learn(CostModel(), [(n, truth.seconds(n)) for n in [1, 2, 3, 1, 16, 2, 8, 1, 4, 16] * 5])
    costs = model.costs(T0 + 2.5)
    # near the truth; the prior (a transaction of 1 and one of 16 mails that never fade) pulls a little
    assert costs.per_txn == pytest.approx(0.012, rel=0.25)
    assert costs.per_mail == pytest.approx(0.003, rel=0.25)
    assert costs.per_txn / costs.per_mail > 2  # the commit is the larger part: not spread over the mails


def test_one_slow_first_transaction_does_not_make_a_steady_stream_a_burst() -> None:
    """The first transaction after start-up (cold caches, imports) took 0.43 s for one mail."""
    model = CostModel().learn(1, 0.43, T0)
    assert not decide(20, costs=model.costs(T0)).burst


def test_what_was_learned_fades_back_to_the_prior() -> None:
    """While threading waits (a burst) nothing new is learned: a bad moment must not keep a stream waiting."""
    model = learn(CostModel(), [(16, 0.9)] * 10)  # the machine stalled: 56 ms a mail (counted up to 3 times
    # the model's expectation each time: after ten of them, nearly all of it)
    assert decide(50, costs=model.costs(T0 + 0.5)).burst
    later = model.costs(T0 + 0.5 + 20 * HALF_LIFE)
    assert later.seconds(1) == pytest.approx(PRIOR.seconds(1), rel=0.02)
    assert later.seconds(16) == pytest.approx(PRIOR.seconds(16), rel=0.02)
    assert not decide(50, costs=later, burst=True).burst


def test_larger_transactions_looking_cheaper_keep_the_prior_fixed_part() -> None:
    model = learn(CostModel(), [(1, 0.2), (16, 0.05)] * 10)
    costs = model.costs(T0 + 1)
    assert costs.per_txn == PRIOR.per_txn
    assert costs.per_mail > 0


def test_nonsense_samples_are_ignored_and_stalls_capped() -> None:
    model = CostModel()
    assert model.learn(0, 0.1, T0) is model
    assert model.learn(3, -1.0, T0) is model
    assert model.learn(3, math.nan, T0) is model
    stalled = model.learn(1, 3600.0, T0).costs(T0)  # counted as 3 times what was expected of it
    assert stalled.seconds(1) < 3 * PRIOR.seconds(1)
    assert model.learn(1, math.inf, T0).costs(T0) == stalled
