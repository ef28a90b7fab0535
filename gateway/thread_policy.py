"""Pure policy: may `serve` thread stored mail now, or should arriving mail go first? (SQLite, one writer.)

No I/O and no clock reads: every function takes the times it needs as arguments (seconds of a monotonic
clock), so the module is tested with fixed clocks. `gateway.service` owns the measuring and the waiting.

On SQLite one writer holds the database at a time; `serve`'s write gate alternates between a store batch
(senders wait for their 250) and one threading transaction (stored mail turned into tickets). Threading n
mails in one transaction takes about `per_txn + n * per_mail` seconds from arriving mail (`Costs`; serve
measures the time the transaction holds the gate plus the CPU time of staging it, when the SMTP sessions wait
for the interpreter): a fixed part (the commit, its fsync, the bookkeeping) and a part per mail. Threading
*keeps pace* with mail arriving at `rate` mail/s when, in transactions of at most `batch` mails, it needs at
most `share` of that time:

    rate * (per_txn / batch + per_mail) <= share                                     (gate_need)

Mail queues while a transaction runs, so at a steady rate the batches grow until they are large enough for
the fixed part to be paid rarely enough: with share s they settle at `rate * per_txn / (s - rate * per_mail)`
mails (`pace_batch`), which is at most `batch` exactly when the inequality holds. Judging a stream by the
cost per mail of the small transactions it gets while threading keeps up (the fixed part spread over two or
three mails) would call a steady stream a burst; judging it by what batches at its pace would cost does not.

A *burst* is mail arriving faster than that: threading could not keep pace anyway, so arriving mail goes
first (senders get their 250 sooner) and threading catches up after it, each mail waiting at most `defer`
seconds since it was queued. A burst ends when the need falls below 3/4 of the share (hysteresis).

`CostModel` learns `Costs` from the transactions threading ran (least squares of seconds on mails, older
transactions weighing less, fading back to a cautious prior while threading waits); `arrival_rate`
smooths the arrival rate, but lets a burst count at once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRIOR", "THREAD_BATCH", "CostModel", "Costs", "Verdict", "arrival_rate", "gate_need", "may_thread",
           "pace_batch"]

HYSTERESIS = 0.75   # a burst ends when the need falls below this part of the share
CLEAR_BURST = 1.0   # a sample needing more than this many times the share counts at once (not smoothed)
SAMPLE_SECONDS = 0.4  # the arrival rate is sampled this often (see arrival_rate)
SMOOTHING = 0.35    # weight of a new arrival-rate sample (about a second remembered)
HALF_LIFE = 2.0     # seconds after which a learned transaction weighs half (see CostModel)
PRIOR_WEIGHT = 1.0  # the prior counts as this many transactions of 1 and of THREAD_BATCH mails
OUTLIER = 3.0       # a transaction counts as at most this many times what the model expected of it
THREAD_BATCH = 16   # the most mails threaded in one transaction (gateway.service uses this one)


@dataclass(frozen=True)
class Costs:
    """Seconds a threading transaction of n mails takes from arriving mail: per_txn + n * per_mail."""

    per_txn: float
    per_mail: float

    def seconds(self, mails: int) -> float:
        return self.per_txn + mails * self.per_mail


# Before anything was measured: a cautious guess (a mail costs more than on most machines), so that a burst
# at start-up is recognised as one at once, while 50 mail/s is not (50 x (0.02 / 16 + 0.008) = 0.46).
PRIOR = Costs(per_txn=0.02, per_mail=0.008)


def gate_need(rate: float, costs: Costs, batch: int) -> float:
    """The share of the write gate (and of the interpreter) threading needs to keep pace with `rate` mail/s in
    transactions of at most `batch` mails (more than 1: it cannot)."""
    return max(0.0, rate) * (costs.per_txn / max(1, batch) + costs.per_mail)


def pace_batch(rate: float, costs: Costs, share: float) -> float | None:
    """The batch size threading settles at keeping pace with `rate` mail/s using `share` of the gate (mails
    queue while a transaction runs); None when no batch size is large enough."""
    room = share - max(0.0, rate) * costs.per_mail
    if room <= 0:
        return None
    return max(1.0, max(0.0, rate) * costs.per_txn / room)


@dataclass(frozen=True)
class Verdict:
    thread: bool    # take the next turn at the gate now
    burst: bool     # mail arrives faster than threading could keep pace with (kept for the next call)


def may_thread(*, single_writer: bool, arriving: bool, rate: float, costs: Costs, share: float, batch: int,
               burst: bool, queued_at: float, now: float, defer: float) -> Verdict:
    """Whether threading takes its next turn at the write gate now.

    single_writer: the database has one writer (SQLite); else threading never waits. arriving: mail is being
    received or stored now. rate: mail/s arriving (`arrival_rate`). costs: what a threading transaction holds
    the gate for (`CostModel.costs`). share: serve.thread_share. batch: the most mails in one threading
    transaction. burst: the verdict before. queued_at, now: when the mail about to be threaded was queued and
    the time now (same clock). defer: serve.defer_seconds, the longest a mail waits in a burst."""
    if not single_writer or not arriving:
        return Verdict(True, burst)
    need = gate_need(rate, costs, batch)
    burst = need > (HYSTERESIS * share if burst else share)
    return Verdict(not burst or now - queued_at >= defer, burst)


def arrival_rate(before: float, sample: float, costs: Costs, share: float, batch: int) -> float:
    """The arrival rate (mail/s) after a new sample (the mails stored in SAMPLE_SECONDS, per second): smoothed
    over about a second, but a sample that alone is a burst (needing more than CLEAR_BURST times the share)
    counts at once, so that senders who wait for each 250 are not held back by threading first (it would
    slow them down to a pace it keeps up with). What was stored, not a guess at the senders' own pace: taking
    off the time stores waited for the gate, as before, read paced streams as bursts whenever a threading
    transaction was long (a 20 mail/s stream as 500 mail/s)."""
    smooth = (1 - SMOOTHING) * before + SMOOTHING * sample
    return max(sample, smooth) if gate_need(sample, costs, batch) > CLEAR_BURST * share else smooth


@dataclass(frozen=True)
class CostModel:
    """Costs learned from threading transactions (mails, seconds): weighted least squares of seconds on mails.
    A transaction weighs less the longer ago it ran (halved every HALF_LIFE seconds); the prior counts as
    PRIOR_WEIGHT transactions of 1 and of THREAD_BATCH mails that never age, so while threading waits (a
    burst) what it learned fades back to the prior instead of keeping a bad moment's verdict. A transaction
    counts as at most OUTLIER times what the model expected of it: one slow transaction (the first after
    start-up, a stalled machine) barely moves it, a machine that stays slower moves it in a few. When the
    larger transactions look no dearer (one size only, or noise), the fixed part is the prior's and the rest
    counts per mail."""

    prior: Costs = PRIOR
    at: float = 0.0         # when the sums below were last brought up to date (monotonic seconds)
    weight: float = 0.0     # sum of the weights of the transactions learned
    mails: float = 0.0      # weighted sum of n
    seconds: float = 0.0    # weighted sum of t
    mails2: float = 0.0     # weighted sum of n * n
    cross: float = 0.0      # weighted sum of n * t

    def aged(self, now: float) -> CostModel:
        f = 0.5 ** (max(0.0, now - self.at) / HALF_LIFE)
        return CostModel(self.prior, max(now, self.at), f * self.weight, f * self.mails, f * self.seconds,
                         f * self.mails2, f * self.cross)

    def learn(self, mails: int, seconds: float, now: float) -> CostModel:
        """The model after a transaction of `mails` mails that took `seconds`, ending at `now`."""
        if mails < 1 or not seconds >= 0:  # (NaN too)
            return self
        n, t, m = float(mails), min(seconds, OUTLIER * self.costs(now).seconds(mails)), self.aged(now)
        return CostModel(self.prior, m.at, m.weight + 1, m.mails + n, m.seconds + t, m.mails2 + n * n,
                         m.cross + n * t)

    def costs(self, now: float) -> Costs:
        m, p, w = self.aged(now), self.prior, PRIOR_WEIGHT
        if m.weight <= 0:
            return p
        big = float(THREAD_BATCH)
        weight = m.weight + 2 * w
        mean_n = (m.mails + w * (1 + big)) / weight
        mean_t = (m.seconds + w * (p.seconds(1) + p.seconds(THREAD_BATCH))) / weight
        var_n = (m.mails2 + w * (1 + big * big)) / weight - mean_n * mean_n
        cov = (m.cross + w * (p.seconds(1) + big * p.seconds(THREAD_BATCH))) / weight - mean_n * mean_t
        slope = cov / var_n if var_n > 0 else 0.0
        if slope <= 0:
            per_txn = min(p.per_txn, mean_t)
            return Costs(per_txn, (mean_t - per_txn) / mean_n)
        intercept = mean_t - slope * mean_n
        if intercept < 0:  # no fixed part
            return Costs(0.0, mean_t / mean_n)
        return Costs(intercept, slope)
