"""Pure SLA policy layer: which policy applies, when things are due, what state a ticket is in.

No database, no I/O and no clock reads: every function takes the time it needs as an argument, so the
whole module is tested with fixed clocks. The SLA listener / scheduler (integration layer) owns storage.

Time conventions
----------------
* Every ``datetime`` passed in must be timezone-aware (a naive one raises ``ValueError``); every
  ``datetime`` returned is aware UTC.  Aware non-UTC inputs are accepted and converted.
* "Wall-clock" time (a policy without a calendar) means elapsed real minutes, i.e. UTC arithmetic:
  a 60-minute deadline across a daylight-saving change is still 60 real minutes later.
* "Business" time (a policy with a :class:`Calendar`) counts only real minutes inside the calendar's
  working hours, evaluated in the calendar's own time zone (``zoneinfo``).  A working day whose hours
  straddle a DST change is therefore one hour shorter/longer in business minutes.

Clock semantics (the product spec)
----------------------------------
* A ticket gets ``(response_due, resolution_due) = deadlines(policy, created_at)``.
* Status *pending* pauses both clocks (store ``paused_at``); leaving pending calls :func:`resume` for each
  deadline that is still running.  The deadline is pushed by the paused span, in business time when the
  policy has a calendar.  A deadline already met (response given / ticket resolved) or already passed at
  the moment of pausing is not moved: met stays met, breached stays breached.
* Reopening a resolved ticket resumes the resolution clock: :func:`reopen` pushes ``resolution_due`` by
  the time the ticket spent resolved (unless it was resolved late, which stays a breach).
* A change of priority / type / organisation / group re-runs :func:`choose_policy`; if the policy
  changed, :func:`change_policy` recomputes the running deadlines, keeping met ones and carrying over
  the time already pushed by pauses.
* Warning times are not stored: :func:`warn_times` derives them from the current deadlines, and stays
  correct after pauses and policy changes (a warning is "X active minutes before the deadline").
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "PRIORITIES",
    "TYPES",
    "STATES",
    "ESCALATION_KINDS",
    "AT_RISK_WITHIN",
    "Calendar",
    "Policy",
    "Escalation",
    "choose_policy",
    "add_minutes",
    "minutes_between",
    "deadlines",
    "warn_at",
    "warn_times",
    "resume",
    "reopen",
    "change_policy",
    "sla_state",
    "escalations_due",
]

UTC = UTC

PRIORITIES: frozenset[str] = frozenset({"low", "medium", "high", "critical"})
TYPES: frozenset[str] = frozenset({"incident", "problem", "service_request", "change_request"})
STATES: tuple[str, ...] = ("breached", "paused", "at_risk", "on_track", "met", "none")
ESCALATION_KINDS: tuple[str, ...] = (
    "response_warning",
    "response_breach",
    "resolution_warning",
    "resolution_breach",
)
#: A running clock whose deadline is this close (wall clock) is "at_risk" even before its warning time.
AT_RISK_WITHIN = timedelta(hours=1)

_ONE_MINUTE = timedelta(minutes=1)


def _utc(value: datetime, name: str = "datetime") -> datetime:
    """Check that ``value`` is aware and return it in UTC."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None, name: str) -> datetime | None:
    return None if value is None else _utc(value, name)


def _minutes_delta(minutes: float, name: str = "minutes") -> timedelta:
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(minutes).__name__}")
    if not math.isfinite(minutes) or minutes < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {minutes!r}")
    return timedelta(minutes=minutes)


# --------------------------------------------------------------------------------------------------
# Business-hours calendar
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    """Business hours: the same working hours on each working day, minus holidays, in one time zone.

    ``tz``: IANA zone name (e.g. ``"Europe/Berlin"``).  ``days``: working weekdays, 0=Mon .. 6=Sun.
    ``start``/``end``: naive local working hours of each working day, ``end > start`` (hours spanning
    midnight are not supported; a policy that runs around the clock has no calendar).
    ``holidays``: local dates that are not worked.

    Local times falling in a DST gap are read with ``fold=0`` (the pre-transition offset, i.e. shifted
    forward by the gap); ambiguous times use their first occurrence.

    Raises ``ValueError`` on an unknown zone, empty or out-of-range ``days``, ``end <= start``, aware
    times or ``datetime`` objects among the holidays.  Iterables given for ``days``/``holidays`` are
    converted to frozensets.
    """

    tz: str
    days: frozenset[int]
    start: time
    end: time
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"calendar tz: unknown time zone {self.tz!r}") from exc
        days = frozenset(self.days)
        if not days:
            raise ValueError("calendar days: at least one working day is needed")
        if any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in days):
            raise ValueError(f"calendar days: weekdays are 0 (Mon) .. 6 (Sun), got {sorted(days, key=str)}")
        object.__setattr__(self, "days", days)
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None:
                raise ValueError(f"calendar {name}: a naive datetime.time is needed, got {value!r}")
        if self.end <= self.start:
            raise ValueError(f"calendar: end ({self.end}) must be after start ({self.start})")
        holidays = frozenset(self.holidays)
        for h in holidays:
            if isinstance(h, datetime) or not isinstance(h, date):
                raise ValueError(f"calendar holidays: dates are needed, got {h!r}")
        object.__setattr__(self, "holidays", holidays)

    @property
    def zone(self) -> ZoneInfo:
        """The calendar's ``ZoneInfo`` (instances are cached by ``zoneinfo``)."""
        return ZoneInfo(self.tz)

    def is_working_day(self, day: date) -> bool:
        """True if the local date ``day`` is a working weekday and not a holiday."""
        return day.weekday() in self.days and day not in self.holidays

    def is_open(self, at: datetime) -> bool:
        """True if the instant ``at`` lies inside working hours (``start`` inclusive, ``end`` exclusive)."""
        at = _utc(at, "at")
        for opens, closes in self._intervals(at):
            return opens <= at < closes
        return False  # pragma: no cover - _intervals is infinite

    def _intervals(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals in UTC, in order, that end after ``after``; the first one is clipped to
        start no earlier than ``after``.  Infinite (``days`` is non-empty, holidays are finite)."""
        zone = self.zone
        day = after.astimezone(zone).date()
        one_day = timedelta(days=1)
        while True:
            if self.is_working_day(day):
                opens = datetime.combine(day, self.start, tzinfo=zone).astimezone(UTC)
                closes = datetime.combine(day, self.end, tzinfo=zone).astimezone(UTC)
                if closes > opens and closes > after:
                    yield max(opens, after), closes
            day += one_day

    def add_business_minutes(self, start: datetime, minutes: float) -> datetime:
        """The instant after ``minutes`` business minutes counted from ``start`` (aware; UTC returned).

        A ``start`` outside working hours starts counting at the next opening.  ``minutes == 0`` returns
        ``start`` unchanged.  A result that uses up a working day exactly is that day's closing time
        (not the next opening).  ``minutes`` must be finite and ``>= 0``; fractions are kept to the
        microsecond.
        """
        start = _utc(start, "start")
        remaining = _minutes_delta(minutes)
        if not remaining:
            return start
        for opens, closes in self._intervals(start):
            span = closes - opens
            if remaining <= span:
                return opens + remaining
            remaining -= span
        raise AssertionError("unreachable")  # pragma: no cover

    def business_minutes_between(self, a: datetime, b: datetime) -> float:
        """Business minutes in ``[a, b)``; negative if ``b < a``.

        Inverse of :meth:`add_business_minutes`: ``business_minutes_between(a, add_business_minutes(a, m))
        == m`` (exactly for whole minutes, to the microsecond otherwise).
        """
        a = _utc(a, "a")
        b = _utc(b, "b")
        if b < a:
            return -self.business_minutes_between(b, a)
        total = timedelta(0)
        for opens, closes in self._intervals(a):
            if opens >= b:
                break
            total += min(closes, b) - opens
        return total / _ONE_MINUTE


# --------------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """One SLA policy.

    ``response_minutes`` / ``resolution_minutes``: targets (> 0), in business minutes when ``calendar``
    is set, otherwise in elapsed minutes.  Filters ``priorities`` / ``types`` / ``organisations`` /
    ``groups``: a ticket matches when each non-empty filter contains the ticket's value (empty = all;
    a ticket without an organisation/group never matches a non-empty filter).  Comparison is exact
    (case-sensitive); organisations are matched by name.
    Warnings: ``warn_percent`` (1..99, percent of the target used) and/or ``warn_minutes_before``
    (> 0); the earlier of the two applies; both ``None`` = no warnings.
    ``active=False`` policies are skipped by :func:`choose_policy`.

    Raises ``ValueError`` on invalid values (unknown priority/type names included); iterables given
    for the filters are converted to frozensets.
    """

    name: str
    response_minutes: int
    resolution_minutes: int
    priorities: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    organisations: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    calendar: Calendar | None = None
    warn_percent: int | None = 80
    warn_minutes_before: int | None = None
    active: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("policy name: a non-empty name is needed")
        where = f"policy {self.name!r}"
        for field in ("response_minutes", "resolution_minutes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{where} {field}: a whole number of minutes > 0 is needed, got {value!r}")
        for field in ("priorities", "types", "organisations", "groups"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise ValueError(f"{where} {field}: a collection of names is needed, not a string")
            values = frozenset(value)
            if any(not isinstance(v, str) for v in values):
                raise ValueError(f"{where} {field}: names must be strings")
            object.__setattr__(self, field, values)
        if unknown := self.priorities - PRIORITIES:
            raise ValueError(f"{where} priorities: unknown {sorted(unknown)}; known: {sorted(PRIORITIES)}")
        if unknown := self.types - TYPES:
            raise ValueError(f"{where} types: unknown {sorted(unknown)}; known: {sorted(TYPES)}")
        if self.calendar is not None and not isinstance(self.calendar, Calendar):
            raise ValueError(f"{where} calendar: a Calendar or None is needed")
        p = self.warn_percent
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 99):
            raise ValueError(f"{where} warn_percent: 1..99 or None, got {p!r}")
        m = self.warn_minutes_before
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0):
            raise ValueError(f"{where} warn_minutes_before: minutes > 0 or None, got {m!r}")

    def matches(self, *, priority: str | None, type: str | None, organisation: str | None,
                group: str | None) -> bool:
        """True if the policy is active and every non-empty filter contains the ticket's value."""
        return self.active and all(
            not allowed or (value is not None and value in allowed)
            for allowed, value in (
                (self.priorities, priority),
                (self.types, type),
                (self.organisations, organisation),
                (self.groups, group),
            )
        )


def choose_policy(policies: Sequence[Policy], *, priority: str | None, type: str | None,
                  organisation: str | None, group: str | None) -> Policy | None:
    """The first active policy, in configured order, whose filters all match; ``None`` if none does.

    Call again whenever priority, type, organisation or group changes (see :func:`change_policy`).
    """
    for policy in policies:
        if policy.matches(priority=priority, type=type, organisation=organisation, group=group):
            return policy
    return None


def add_minutes(policy: Policy, start: datetime, minutes: float) -> datetime:
    """``start`` plus ``minutes`` in the policy's time: business minutes with a calendar, else elapsed."""
    if policy.calendar is not None:
        return policy.calendar.add_business_minutes(start, minutes)
    return _utc(start, "start") + _minutes_delta(minutes)


def minutes_between(policy: Policy, a: datetime, b: datetime) -> float:
    """Minutes from ``a`` to ``b`` in the policy's time (negative if ``b < a``); inverse of add_minutes."""
    if policy.calendar is not None:
        return policy.calendar.business_minutes_between(a, b)
    return (_utc(b, "b") - _utc(a, "a")) / _ONE_MINUTE


def deadlines(policy: Policy, created_at: datetime) -> tuple[datetime, datetime]:
    """``(response_due, resolution_due)`` for a ticket created at ``created_at`` (clock starts then,
    or at the next opening when the policy has a calendar)."""
    return (add_minutes(policy, created_at, policy.response_minutes),
            add_minutes(policy, created_at, policy.resolution_minutes))


# --------------------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------------------


def warn_at(policy: Policy, started_at: datetime, due_at: datetime, *,
            budget_minutes: float | None = None) -> datetime | None:
    """When to warn for a clock that started at ``started_at`` and is due at ``due_at``.

    The earlier of: ``warn_percent`` of the target used, and ``warn_minutes_before`` the deadline, both
    measured in the policy's time.  ``None`` if the policy has no thresholds or ``due_at <= started_at``.
    A warning that would fall before ``started_at`` (e.g. 60 minutes before a 30-minute deadline) is
    ``started_at``.

    ``budget_minutes`` is the clock's target (``policy.response_minutes`` or ``resolution_minutes``).
    Without it the whole span ``started_at..due_at`` is taken as the target, which is right for a fresh
    clock; pass it when the deadline was pushed by pauses, so that the percentage is of the active
    time (the warning is then "X active minutes before the deadline").  :func:`warn_times` does this.
    """
    started_at = _utc(started_at, "started_at")
    due_at = _utc(due_at, "due_at")
    if policy.warn_percent is None and policy.warn_minutes_before is None:
        return None
    if due_at <= started_at:
        return None
    span = minutes_between(policy, started_at, due_at)
    budget = span if budget_minutes is None else min(float(budget_minutes), span)
    before = 0.0  # minutes before the deadline; the larger one is the earlier warning
    if policy.warn_percent is not None:
        before = max(before, budget * (100 - policy.warn_percent) / 100)
    if policy.warn_minutes_before is not None:
        before = max(before, float(policy.warn_minutes_before))
    if before >= span:
        return started_at
    return add_minutes(policy, started_at, span - before)


def warn_times(policy: Policy, created_at: datetime, response_due: datetime | None,
               resolution_due: datetime | None) -> tuple[datetime | None, datetime | None]:
    """``(warn_response_at, warn_resolution_at)`` for the ticket's current deadlines.

    Pause-aware (uses the policy's targets as budgets), so it can be recomputed at any time from the
    stored deadlines instead of being stored.  ``None`` where the deadline is ``None``.
    """
    resp = None if response_due is None else warn_at(
        policy, created_at, response_due, budget_minutes=policy.response_minutes)
    reso = None if resolution_due is None else warn_at(
        policy, created_at, resolution_due, budget_minutes=policy.resolution_minutes)
    return resp, reso


# --------------------------------------------------------------------------------------------------
# Pause / resume / reopen / policy change
# --------------------------------------------------------------------------------------------------


def resume(policy: Policy, due_at: datetime, paused_at: datetime, resumed_at: datetime, *,
           met: bool = False) -> datetime:
    """The deadline after a pause from ``paused_at`` to ``resumed_at``.

    Pushed by the paused span measured in the policy's time (business minutes with a calendar, so a
    pause over a weekend costs nothing extra).  Unchanged when ``met`` (the deadline was already met:
    met stays met) or when ``due_at <= paused_at`` (already breached before the pause: stays breached).
    Use the same call for any stored warning time.  ``resumed_at < paused_at`` raises ``ValueError``.
    """
    due_at = _utc(due_at, "due_at")
    paused_at = _utc(paused_at, "paused_at")
    resumed_at = _utc(resumed_at, "resumed_at")
    if resumed_at < paused_at:
        raise ValueError(f"resumed_at {resumed_at} is before paused_at {paused_at}")
    if met or due_at <= paused_at:
        return due_at
    return add_minutes(policy, due_at, minutes_between(policy, paused_at, resumed_at))


def reopen(policy: Policy, resolution_due: datetime, resolved_at: datetime,
           reopened_at: datetime) -> datetime:
    """The resolution deadline when a resolved ticket is reopened: the resolution clock resumes, so
    the deadline is pushed by the time spent resolved.  A ticket resolved after its deadline stays
    breached (deadline unchanged).  The response clock is not affected."""
    return resume(policy, resolution_due, resolved_at, reopened_at)


def change_policy(old: Policy | None, new: Policy | None, created_at: datetime, *,
                  response_due: datetime | None, resolution_due: datetime | None,
                  first_response_at: datetime | None,
                  resolved_at: datetime | None) -> tuple[datetime | None, datetime | None]:
    """New ``(response_due, resolution_due)`` after the applicable policy changed from ``old`` to ``new``
    (e.g. the priority changed and :func:`choose_policy` picked another policy).

    * ``new is None``: the ticket leaves SLA, ``(None, None)``.
    * A met clock (response given / resolved) keeps its old deadline: met stays met.
    * A running clock gets ``new``'s target counted from ``created_at``, plus the time its old deadline
      had been pushed by pauses (old deadline minus old target, measured in ``old``'s time and carried
      over as minutes; exact when both policies use the same calendar or none).
    * ``old is None`` (or no old deadline): plain :func:`deadlines`.

    The result may be earlier than ``now`` (e.g. raised to critical after an hour): that is a breach.
    """
    created_at = _utc(created_at, "created_at")
    if new is None:
        return None, None
    response_due = _opt_utc(response_due, "response_due")
    resolution_due = _opt_utc(resolution_due, "resolution_due")
    response_met = first_response_at is not None or resolved_at is not None
    resolution_met = resolved_at is not None

    def carry(old_due: datetime | None, old_target: int | None, new_target: int, met: bool) -> datetime:
        if met and old_due is not None:
            return old_due
        pushed = 0.0
        if old is not None and old_due is not None and old_target is not None:
            pushed = max(0.0, minutes_between(old, created_at, old_due) - old_target)
        return add_minutes(new, created_at, new_target + pushed)

    return (
        carry(response_due, old.response_minutes if old else None, new.response_minutes, response_met),
        carry(resolution_due, old.resolution_minutes if old else None, new.resolution_minutes,
              resolution_met),
    )


# --------------------------------------------------------------------------------------------------
# State and escalations
# --------------------------------------------------------------------------------------------------


class _Clock(NamedTuple):
    name: str  # "response" | "resolution"
    due: datetime
    stopped: datetime | None  # when it was met (or not)
    warn: datetime | None


def _clocks(response_due: datetime | None, resolution_due: datetime | None,
            first_response_at: datetime | None, resolved_at: datetime | None,
            warn_response_at: datetime | None, warn_resolution_at: datetime | None) -> list[_Clock]:
    resolved = _opt_utc(resolved_at, "resolved_at")
    responded = _opt_utc(first_response_at, "first_response_at")
    clocks: list[_Clock] = []
    if response_due is not None:
        # Resolving a ticket that never got a response also stops the response clock.
        stopped = responded if responded is not None else resolved
        clocks.append(_Clock("response", _utc(response_due, "response_due"), stopped,
                             _opt_utc(warn_response_at, "warn_response_at")))
    if resolution_due is not None:
        clocks.append(_Clock("resolution", _utc(resolution_due, "resolution_due"), resolved,
                             _opt_utc(warn_resolution_at, "warn_resolution_at")))
    return clocks


def sla_state(now: datetime, *, response_due: datetime | None, resolution_due: datetime | None,
              first_response_at: datetime | None, resolved_at: datetime | None,
              paused_at: datetime | None, warn_response_at: datetime | None = None,
              warn_resolution_at: datetime | None = None) -> str:
    """The ticket's SLA state at ``now``; one of :data:`STATES`, first applicable wins:

    * ``"none"``: no deadlines (no policy applies).
    * ``"breached"``: a clock was met late, or a running clock reached its deadline
      (``now >= due``).  Wins over ``"paused"``: pausing does not hide a breach that already happened.
    * ``"paused"``: ``paused_at`` is set and some clock is still running.  While paused, running
      clocks are evaluated at ``paused_at`` (stored deadlines are pushed only on resume).
    * ``"at_risk"``: a running clock is past its warning time or within :data:`AT_RISK_WITHIN`
      (wall clock) of its deadline.
    * ``"on_track"``: some clock is running.
    * ``"met"``: every clock stopped in time.

    A clock is "stopped" when met: the response clock by ``first_response_at`` (or by ``resolved_at``
    when there was no response), the resolution clock by ``resolved_at``.  Pass ``resolved_at=None``
    again after a reopen.
    """
    now = _utc(now, "now")
    paused = _opt_utc(paused_at, "paused_at")
    t = paused if paused is not None and paused < now else now
    clocks = _clocks(response_due, resolution_due, first_response_at, resolved_at,
                     warn_response_at, warn_resolution_at)
    if not clocks:
        return "none"
    running = [c for c in clocks if c.stopped is None]
    if any(c.stopped is not None and c.stopped > c.due for c in clocks) or any(
            t >= c.due for c in running):
        return "breached"
    if not running:
        return "met"
    if paused is not None:
        return "paused"
    if any((c.warn is not None and t >= c.warn) or c.due - t <= AT_RISK_WITHIN for c in running):
        return "at_risk"
    return "on_track"


class Escalation(NamedTuple):
    """An escalation that is due: ``kind`` (one of :data:`ESCALATION_KINDS`) and the instant ``at`` it
    became due (the warning time or the deadline)."""

    kind: str
    at: datetime


def escalations_due(now: datetime, *, response_due: datetime | None, resolution_due: datetime | None,
                    first_response_at: datetime | None, resolved_at: datetime | None,
                    paused_at: datetime | None, warn_response_at: datetime | None = None,
                    warn_resolution_at: datetime | None = None,
                    sent: Collection[str] = ()) -> list[Escalation]:
    """Escalations whose time has come at ``now`` and whose kind is not in ``sent``, oldest first.

    Only running clocks escalate (a clock met, even late, escalates nothing more).  While paused, a
    clock is evaluated at ``paused_at``: only thresholds passed before the pause are due.  When a
    clock's breach is due its warning is not returned (the breach says more); mark both as sent.

    Dedupe is the caller's: ``sent`` holds the kinds already sent for the ticket.  Keep them across
    pauses and resumes; clear a clock's kinds when its deadline is recomputed by a policy change or
    when a reopen restarts the resolution clock, if a new warning/breach should be possible.
    """
    now = _utc(now, "now")
    paused = _opt_utc(paused_at, "paused_at")
    t = paused if paused is not None and paused < now else now
    due: list[Escalation] = []
    for c in _clocks(response_due, resolution_due, first_response_at, resolved_at,
                     warn_response_at, warn_resolution_at):
        if c.stopped is not None:
            continue
        if t >= c.due:
            if f"{c.name}_breach" not in sent:
                due.append(Escalation(f"{c.name}_breach", c.due))
        elif c.warn is not None and t >= c.warn and f"{c.name}_warning" not in sent:
            due.append(Escalation(f"{c.name}_warning", c.warn))
    due.sort(key=lambda e: (e.at, ESCALATION_KINDS.index(e.kind)))
    return due
