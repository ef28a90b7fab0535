"""Unit tests for gateway.sla_policy: fixed clocks only (no sleeping, no now())."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.sla_policy import (
    AT_RISK_WITHIN,
    Calendar,
    Escalation,
    Policy,
    add_minutes,
    change_policy,
    choose_policy,
    deadlines,
    escalations_due,
    minutes_between,
    reopen,
    resume,
    sla_state,
    warn_at,
    warn_times,
)

UTC = UTC
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
WEEKDAYS = frozenset(range(5))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0) -> datetime:
    """A local wall time in ``tz`` as aware UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def office(tz: str = BERLIN, *, holidays: frozenset[date] = frozenset(),
           days: frozenset[int] = WEEKDAYS, start: time = time(9), end: time = time(17)) -> Calendar:
    return Calendar(tz=tz, days=days, start=start, end=end, holidays=holidays)


# ------------------------------------------------------------------------------------------------
# Calendar: business hours
# ------------------------------------------------------------------------------------------------


class TestCalendar:
    def test_within_one_day(self) -> None:
        cal = office()
        start = local(BERLIN, 2026, 6, 10, 10, 0)  # Wednesday
        assert cal.add_business_minutes(start, 90) == local(BERLIN, 2026, 6, 10, 11, 30)
        assert cal.business_minutes_between(start, local(BERLIN, 2026, 6, 10, 11, 30)) == 90

    def test_results_are_utc(self) -> None:
        due = office().add_business_minutes(local(BERLIN, 2026, 6, 10, 10, 0), 30)
        assert due.tzinfo is UTC
        assert due == utc(2026, 6, 10, 8, 30)  # CEST = UTC+2

    def test_across_the_night(self) -> None:
        cal = office()
        start = local(BERLIN, 2026, 6, 10, 16, 0)  # Wednesday 16:00
        assert cal.add_business_minutes(start, 120) == local(BERLIN, 2026, 6, 11, 10, 0)
        # the night counts nothing
        assert cal.business_minutes_between(local(BERLIN, 2026, 6, 10, 17, 0),
                                            local(BERLIN, 2026, 6, 11, 9, 0)) == 0

    def test_across_the_weekend(self) -> None:
        cal = office()
        start = local(BERLIN, 2026, 6, 12, 16, 30)  # Friday 16:30
        assert cal.add_business_minutes(start, 60) == local(BERLIN, 2026, 6, 15, 9, 30)  # Monday

    def test_exact_end_of_day_is_closing_time_not_next_opening(self) -> None:
        cal = office()
        start = local(BERLIN, 2026, 6, 12, 16, 0)  # Friday
        assert cal.add_business_minutes(start, 60) == local(BERLIN, 2026, 6, 12, 17, 0)

    def test_zero_minutes_returns_start_unchanged(self) -> None:
        saturday = local(BERLIN, 2026, 6, 13, 12, 0)
        assert office().add_business_minutes(saturday, 0) == saturday

    @pytest.mark.parametrize("start", [
        local(BERLIN, 2026, 6, 13, 12, 0),  # Saturday noon
        local(BERLIN, 2026, 6, 14, 23, 0),  # Sunday night
        local(BERLIN, 2026, 6, 15, 7, 0),   # Monday before opening
        local(BERLIN, 2026, 6, 12, 17, 0),  # Friday at closing time
        local(BERLIN, 2026, 6, 12, 20, 0),  # Friday evening
    ])
    def test_start_outside_hours_clock_starts_at_next_opening(self, start: datetime) -> None:
        assert office().add_business_minutes(start, 15) == local(BERLIN, 2026, 6, 15, 9, 15)

    def test_holiday_is_skipped(self) -> None:
        cal = office(holidays=frozenset({date(2026, 12, 25)}))  # a Friday
        start = local(BERLIN, 2026, 12, 24, 16, 0)  # Thursday
        assert cal.add_business_minutes(start, 120) == local(BERLIN, 2026, 12, 28, 10, 0)
        assert cal.add_business_minutes(start, 120) == utc(2026, 12, 28, 9, 0)  # CET = UTC+1
        assert cal.business_minutes_between(start, local(BERLIN, 2026, 12, 28, 10, 0)) == 120
        # without the holiday the Friday counts
        assert office().add_business_minutes(start, 120) == local(BERLIN, 2026, 12, 25, 10, 0)

    def test_several_days(self) -> None:
        cal = office()
        start = local(BERLIN, 2026, 6, 10, 13, 0)  # Wednesday 13:00
        # 3 full days (24h of business time) + 1h: Wed 4h, Thu 8h, Fri 8h, Mon 5h
        due = cal.add_business_minutes(start, 25 * 60)
        assert due == local(BERLIN, 2026, 6, 15, 14, 0)
        assert cal.business_minutes_between(start, due) == 25 * 60

    def test_many_weeks(self) -> None:
        cal = office()
        start = local(BERLIN, 2026, 6, 1, 9, 0)  # Monday opening
        # 4 weeks of 5 x 8h, ending exactly at a Friday's closing time
        assert cal.add_business_minutes(start, 4 * 5 * 8 * 60) == local(BERLIN, 2026, 6, 26, 17, 0)

    def test_between_is_signed_and_clips_outside_hours(self) -> None:
        cal = office()
        a = local(BERLIN, 2026, 6, 13, 0, 0)  # Saturday
        b = local(BERLIN, 2026, 6, 15, 10, 0)  # Monday 10:00
        assert cal.business_minutes_between(a, b) == 60
        assert cal.business_minutes_between(b, a) == -60
        assert cal.business_minutes_between(a, a) == 0

    def test_dst_spring_forward_berlin_weekend(self) -> None:
        # Berlin goes CET -> CEST on Sunday 2026-03-29: Friday 09-17 is 08-16 UTC, Monday 07-15 UTC.
        cal = office()
        start = local(BERLIN, 2026, 3, 27, 16, 0)
        assert start == utc(2026, 3, 27, 15, 0)
        due = cal.add_business_minutes(start, 120)
        assert due == local(BERLIN, 2026, 3, 30, 10, 0) == utc(2026, 3, 30, 8, 0)
        assert cal.business_minutes_between(start, due) == 120

    def test_dst_fall_back_berlin_weekend(self) -> None:
        # Berlin goes CEST -> CET on Sunday 2026-10-25.
        cal = office()
        start = local(BERLIN, 2026, 10, 23, 16, 0)
        assert start == utc(2026, 10, 23, 14, 0)
        due = cal.add_business_minutes(start, 120)
        assert due == local(BERLIN, 2026, 10, 26, 10, 0) == utc(2026, 10, 26, 9, 0)

    def test_dst_day_with_seven_day_calendar(self) -> None:
        # A Sunday worked 09-17 straddles no transition (02:00 local): 8 real hours, local times kept.
        cal = office(days=frozenset(range(7)))
        assert cal.add_business_minutes(local(BERLIN, 2026, 3, 28, 16, 0), 120) == utc(2026, 3, 29, 8, 0)
        assert cal.add_business_minutes(local(BERLIN, 2026, 10, 24, 16, 0), 120) == utc(2026, 10, 25, 9, 0)

    def test_hours_straddling_the_transition_count_real_minutes(self) -> None:
        cal = office(days=frozenset(range(7)), start=time(1), end=time(4))
        # 2026-03-29 01:00 CET .. 04:00 CEST is 2 real hours; 2026-10-25 01:00 CEST .. 04:00 CET is 4.
        spring_open, spring_close = local(BERLIN, 2026, 3, 29, 1, 0), local(BERLIN, 2026, 3, 29, 4, 0)
        assert cal.business_minutes_between(spring_open, spring_close) == 120
        assert cal.add_business_minutes(spring_open, 120) == spring_close == utc(2026, 3, 29, 2, 0)
        autumn_open, autumn_close = local(BERLIN, 2026, 10, 25, 1, 0), local(BERLIN, 2026, 10, 25, 4, 0)
        assert cal.business_minutes_between(autumn_open, autumn_close) == 240
        assert cal.add_business_minutes(autumn_open, 240) == autumn_close == utc(2026, 10, 25, 3, 0)
        # on ordinary days the window is 3 hours
        assert cal.business_minutes_between(local(BERLIN, 2026, 3, 28, 0, 0),
                                            local(BERLIN, 2026, 3, 28, 23, 0)) == 180

    def test_opening_inside_the_dst_gap(self) -> None:
        # 02:30 does not exist on 2026-03-29 in Berlin: read with fold=0, i.e. 03:30 CEST (01:30 UTC).
        cal = office(days=frozenset(range(7)), start=time(2, 30), end=time(5))
        assert cal.add_business_minutes(utc(2026, 3, 29, 0, 0), 30) == utc(2026, 3, 29, 2, 0)
        assert cal.business_minutes_between(utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 12, 0)) == 90

    def test_dst_new_york_spring_and_fall(self) -> None:
        cal = office(NEW_YORK)
        # 2026-03-08: EST (UTC-5) -> EDT (UTC-4)
        start = local(NEW_YORK, 2026, 3, 6, 16, 0)
        assert start == utc(2026, 3, 6, 21, 0)
        assert cal.add_business_minutes(start, 120) == utc(2026, 3, 9, 14, 0)
        # 2026-11-01: EDT -> EST
        start = local(NEW_YORK, 2026, 10, 30, 16, 0)
        assert start == utc(2026, 10, 30, 20, 0)
        assert cal.add_business_minutes(start, 120) == utc(2026, 11, 2, 15, 0)

    def test_dst_new_york_night_hours(self) -> None:
        cal = office(NEW_YORK, days=frozenset(range(7)), start=time(0), end=time(6))
        assert cal.business_minutes_between(local(NEW_YORK, 2026, 3, 8, 0, 0),
                                            local(NEW_YORK, 2026, 3, 8, 6, 0)) == 300
        assert cal.business_minutes_between(local(NEW_YORK, 2026, 11, 1, 0, 0),
                                            local(NEW_YORK, 2026, 11, 1, 6, 0)) == 420

    def test_is_open(self) -> None:
        cal = office(holidays=frozenset({date(2026, 6, 11)}))
        assert cal.is_open(local(BERLIN, 2026, 6, 10, 9, 0))
        assert not cal.is_open(local(BERLIN, 2026, 6, 10, 17, 0))
        assert not cal.is_open(local(BERLIN, 2026, 6, 11, 12, 0))  # holiday
        assert not cal.is_open(local(BERLIN, 2026, 6, 13, 12, 0))  # Saturday

    def test_non_utc_aware_input_is_accepted_output_utc(self) -> None:
        start = datetime(2026, 6, 10, 10, 0, tzinfo=ZoneInfo(BERLIN))
        due = office().add_business_minutes(start, 30)
        assert due == utc(2026, 6, 10, 8, 30) and due.tzinfo is UTC

    def test_naive_datetimes_are_refused(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            office().add_business_minutes(datetime(2026, 6, 10, 10, 0), 30)
        with pytest.raises(ValueError, match="aware"):
            office().business_minutes_between(utc(2026, 6, 10), datetime(2026, 6, 11))

    @pytest.mark.parametrize("minutes", [-1, float("nan"), float("inf")])
    def test_bad_minutes_are_refused(self, minutes: float) -> None:
        with pytest.raises(ValueError):
            office().add_business_minutes(utc(2026, 6, 10, 10), minutes)

    @pytest.mark.parametrize("kwargs, message", [
        ({"tz": "Mars/Olympus"}, "unknown time zone"),
        ({"days": frozenset()}, "at least one"),
        ({"days": frozenset({7})}, "weekdays"),
        ({"start": time(17), "end": time(9)}, "after start"),
        ({"start": time(9), "end": time(9)}, "after start"),
        ({"holidays": frozenset({datetime(2026, 12, 25)})}, "dates"),
    ])
    def test_invalid_calendars(self, kwargs: dict[str, object], message: str) -> None:
        args: dict[str, object] = {"tz": BERLIN, "days": WEEKDAYS, "start": time(9), "end": time(17)}
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            Calendar(**args)  # type: ignore[arg-type]

    def test_iterables_are_frozen(self) -> None:
        cal = Calendar(BERLIN, {0, 1}, time(9), time(17), [date(2026, 1, 1)])  # type: ignore[arg-type]
        assert cal.days == frozenset({0, 1}) and cal.holidays == frozenset({date(2026, 1, 1)})
        hash(cal)

    @pytest.mark.parametrize("cal", [
        office(BERLIN, holidays=frozenset({date(2026, 3, 30), date(2026, 10, 26), date(2026, 12, 25)}),
               start=time(8, 30), end=time(17, 45)),
        office(NEW_YORK, holidays=frozenset({date(2026, 3, 9), date(2026, 11, 26)})),
        # every day, hours straddling the 02:00/03:00 transitions
        office(BERLIN, days=frozenset(range(7)), start=time(1), end=time(4)),
        office(NEW_YORK, days=frozenset({5, 6}), start=time(0), end=time(23, 59, 59)),
    ], ids=["berlin-office", "new-york-office", "berlin-nights", "new-york-weekends"])
    def test_property_between_inverts_add(self, cal: Calendar) -> None:
        """business_minutes_between(a, add_business_minutes(a, m)) == m, seeded random loop."""
        rng = random.Random(20260329)
        lo = utc(2026, 1, 1).timestamp()
        hi = utc(2027, 1, 1).timestamp()
        for _ in range(1000):
            a = datetime.fromtimestamp(rng.uniform(lo, hi), tz=UTC)
            m = rng.randint(1, 10_000)
            b = cal.add_business_minutes(a, m)
            assert b > a
            assert cal.business_minutes_between(a, b) == m, (a, m, b)
            assert cal.is_open(b - timedelta(microseconds=1))
            # fractional minutes: exact to the microsecond
            f = rng.uniform(0.001, 5_000)
            assert cal.business_minutes_between(a, cal.add_business_minutes(a, f)) == pytest.approx(
                f, abs=1e-6)

    def test_property_between_is_additive(self) -> None:
        rng = random.Random(7)
        cal = office(NEW_YORK)
        base = utc(2026, 2, 20).timestamp()
        for _ in range(200):
            a, b, c = sorted(datetime.fromtimestamp(base + rng.uniform(0, 90 * 86400), tz=UTC)
                             for _ in range(3))
            total = cal.business_minutes_between(a, c)
            parts = cal.business_minutes_between(a, b) + cal.business_minutes_between(b, c)
            assert total == pytest.approx(parts, abs=1e-9)


# ------------------------------------------------------------------------------------------------
# Policies and choosing
# ------------------------------------------------------------------------------------------------

CRITICAL = Policy("critical", response_minutes=15, resolution_minutes=240, priorities=frozenset({"critical"}))
ACME_INCIDENTS = Policy("acme-incidents", 30, 480, types=frozenset({"incident"}),
                        organisations=frozenset({"ACME"}))
SUPPORT_GROUP = Policy("support-high", 60, 960, priorities=frozenset({"high"}), groups=frozenset({"support"}))
RETIRED = Policy("retired", 1, 2, active=False)
DEFAULT = Policy("default", 480, 4800, calendar=office())
POLICIES = [RETIRED, CRITICAL, ACME_INCIDENTS, SUPPORT_GROUP, DEFAULT]


class TestChoosePolicy:
    @pytest.mark.parametrize("ticket, expected", [
        (dict(priority="critical", type="incident", organisation="ACME", group=None), CRITICAL),
        (dict(priority="low", type="incident", organisation="ACME", group=None), ACME_INCIDENTS),
        (dict(priority="low", type="problem", organisation="ACME", group=None), DEFAULT),
        (dict(priority="high", type="problem", organisation=None, group="support"), SUPPORT_GROUP),
        (dict(priority="high", type="problem", organisation=None, group=None), DEFAULT),
        (dict(priority="medium", type="change_request", organisation="Other", group="x"), DEFAULT),
    ])
    def test_first_active_match_in_order(self, ticket: dict[str, str | None], expected: Policy) -> None:
        assert choose_policy(POLICIES, **ticket) is expected

    def test_inactive_policies_are_skipped_and_none_when_nothing_matches(self) -> None:
        assert choose_policy([RETIRED], priority="low", type="incident", organisation=None,
                             group=None) is None
        assert choose_policy([CRITICAL], priority="low", type="incident", organisation=None,
                             group=None) is None
        assert choose_policy([], priority="low", type="incident", organisation=None, group=None) is None

    def test_order_decides(self) -> None:
        assert choose_policy([DEFAULT, CRITICAL], priority="critical", type="incident",
                             organisation=None, group=None) is DEFAULT

    @pytest.mark.parametrize("kwargs, message", [
        ({"name": " "}, "name"),
        ({"response_minutes": 0}, "response_minutes"),
        ({"resolution_minutes": 1.5}, "resolution_minutes"),
        ({"priorities": frozenset({"urgent"})}, "unknown"),
        ({"types": frozenset({"question"})}, "unknown"),
        ({"groups": "support"}, "not a string"),
        ({"warn_percent": 100}, "warn_percent"),
        ({"warn_percent": 0}, "warn_percent"),
        ({"warn_minutes_before": 0}, "warn_minutes_before"),
    ])
    def test_invalid_policies(self, kwargs: dict[str, object], message: str) -> None:
        args: dict[str, object] = {"name": "p", "response_minutes": 10, "resolution_minutes": 20}
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            Policy(**args)  # type: ignore[arg-type]

    def test_filters_given_as_lists_are_frozen(self) -> None:
        p = Policy("p", 10, 20, priorities=["high", "critical"])  # type: ignore[arg-type]
        assert p.priorities == frozenset({"high", "critical"})
        hash(p)


# ------------------------------------------------------------------------------------------------
# Deadlines
# ------------------------------------------------------------------------------------------------


class TestDeadlines:
    def test_wall_clock(self) -> None:
        created = utc(2026, 6, 13, 22, 0)  # Saturday night: no calendar, time runs anyway
        assert deadlines(CRITICAL, created) == (utc(2026, 6, 13, 22, 15), utc(2026, 6, 14, 2, 0))

    def test_wall_clock_across_dst_is_elapsed_time(self) -> None:
        created = local(BERLIN, 2026, 3, 29, 1, 30)  # 00:30 UTC, the clocks jump at 01:00 UTC
        response, resolution = deadlines(CRITICAL, created)
        assert resolution - created == timedelta(hours=4)
        assert resolution == local(BERLIN, 2026, 3, 29, 6, 30)  # 4 real hours = 5 hours on the wall

    def test_business_hours(self) -> None:
        created = local(BERLIN, 2026, 6, 12, 15, 0)  # Friday 15:00
        response, resolution = deadlines(DEFAULT, created)
        assert response == local(BERLIN, 2026, 6, 15, 15, 0)  # 2h Friday + 6h Monday
        assert resolution == local(BERLIN, 2026, 6, 26, 15, 0)  # 10 business days

    def test_created_outside_hours(self) -> None:
        created = local(BERLIN, 2026, 6, 13, 10, 0)  # Saturday
        assert deadlines(DEFAULT, created)[0] == local(BERLIN, 2026, 6, 15, 17, 0)

    def test_add_minutes_and_minutes_between(self) -> None:
        start = local(BERLIN, 2026, 6, 12, 16, 0)
        assert add_minutes(CRITICAL, start, 120) == start + timedelta(hours=2)
        assert add_minutes(DEFAULT, start, 120) == local(BERLIN, 2026, 6, 15, 10, 0)
        assert minutes_between(CRITICAL, start, start + timedelta(days=3)) == 3 * 24 * 60
        assert minutes_between(DEFAULT, start, start + timedelta(days=3)) == 60 + 7 * 60


# ------------------------------------------------------------------------------------------------
# Warnings
# ------------------------------------------------------------------------------------------------


class TestWarnings:
    def test_by_percent(self) -> None:
        p = Policy("p", 100, 1000, warn_percent=80)
        assert warn_at(p, utc(2026, 6, 1, 10), utc(2026, 6, 1, 11, 40)) == utc(2026, 6, 1, 11, 20)

    def test_by_minutes_before(self) -> None:
        p = Policy("p", 100, 1000, warn_percent=None, warn_minutes_before=30)
        assert warn_at(p, utc(2026, 6, 1, 10), utc(2026, 6, 1, 11, 40)) == utc(2026, 6, 1, 11, 10)

    def test_earlier_of_both(self) -> None:
        start, due = utc(2026, 6, 1, 10), utc(2026, 6, 1, 11, 40)
        p = Policy("p", 100, 1000, warn_percent=80, warn_minutes_before=30)
        assert warn_at(p, start, due) == utc(2026, 6, 1, 11, 10)  # 30 before beats 20 before
        p = Policy("p", 100, 1000, warn_percent=50, warn_minutes_before=30)
        assert warn_at(p, start, due) == utc(2026, 6, 1, 10, 50)  # 50 % beats 30 before

    def test_no_thresholds(self) -> None:
        p = Policy("p", 100, 1000, warn_percent=None, warn_minutes_before=None)
        assert warn_at(p, utc(2026, 6, 1, 10), utc(2026, 6, 1, 11, 40)) is None

    def test_threshold_longer_than_the_clock_warns_at_start(self) -> None:
        p = Policy("p", 15, 1000, warn_percent=None, warn_minutes_before=60)
        assert warn_at(p, utc(2026, 6, 1, 10), utc(2026, 6, 1, 10, 15)) == utc(2026, 6, 1, 10)

    def test_due_not_after_start(self) -> None:
        assert warn_at(CRITICAL, utc(2026, 6, 1, 10), utc(2026, 6, 1, 10)) is None

    def test_business_time(self) -> None:
        p = Policy("p", 480, 4800, calendar=office(), warn_percent=None, warn_minutes_before=60)
        created = local(BERLIN, 2026, 6, 12, 15, 0)  # Friday 15:00
        response, _ = deadlines(p, created)
        assert response == local(BERLIN, 2026, 6, 15, 15, 0)
        assert warn_at(p, created, response) == local(BERLIN, 2026, 6, 15, 14, 0)
        # a deadline at Monday 09:30 warns Friday 16:30 (60 business minutes before), not Monday 08:30
        created = local(BERLIN, 2026, 6, 12, 16, 0)  # Friday 16:00
        p = Policy("p", 90, 4800, calendar=office(), warn_percent=None, warn_minutes_before=60)
        response, _ = deadlines(p, created)
        assert response == local(BERLIN, 2026, 6, 15, 9, 30)
        assert warn_at(p, created, response) == local(BERLIN, 2026, 6, 12, 16, 30)
        p = Policy("p", 100, 4800, calendar=office(), warn_percent=80)
        response, _ = deadlines(p, created)  # Monday 09:40
        assert warn_at(p, created, response) == local(BERLIN, 2026, 6, 15, 9, 20)

    def test_pause_aware_with_budget(self) -> None:
        p = Policy("p", 100, 1000, warn_percent=80)
        created = utc(2026, 6, 1, 10)
        due = utc(2026, 6, 1, 11, 50)  # pushed by a 10-minute pause
        assert warn_at(p, created, due) == utc(2026, 6, 1, 11, 28)  # 80 % of the whole span
        assert warn_at(p, created, due, budget_minutes=100) == utc(2026, 6, 1, 11, 30)  # 80 active min
        assert warn_times(p, created, due, None) == (utc(2026, 6, 1, 11, 30), None)

    def test_warn_times_fresh_ticket(self) -> None:
        p = Policy("p", 100, 1000, warn_percent=80)
        created = utc(2026, 6, 1, 10)
        assert warn_times(p, created, *deadlines(p, created)) == (
            created + timedelta(minutes=80), created + timedelta(minutes=800))


# ------------------------------------------------------------------------------------------------
# Pause / resume / reopen / policy change
# ------------------------------------------------------------------------------------------------


class TestPauseResume:
    def test_wall_clock_push(self) -> None:
        due = utc(2026, 6, 1, 12)
        assert resume(CRITICAL, due, utc(2026, 6, 1, 10), utc(2026, 6, 1, 10, 45)) == utc(2026, 6, 1, 12, 45)

    def test_business_time_push_ignores_nights_and_weekends(self) -> None:
        # due Fri 16:00, paused Fri 15:00, resumed Mon 10:00: 60 min were left at the pause
        due = local(BERLIN, 2026, 6, 12, 16, 0)
        paused = local(BERLIN, 2026, 6, 12, 15, 0)
        resumed = local(BERLIN, 2026, 6, 15, 10, 0)
        assert resume(DEFAULT, due, paused, resumed) == local(BERLIN, 2026, 6, 15, 11, 0)
        # a wall-clock policy pushes by the full 67 hours
        assert resume(CRITICAL, due, paused, resumed) == due + (resumed - paused)

    def test_pause_entirely_outside_hours_costs_nothing(self) -> None:
        due = local(BERLIN, 2026, 6, 15, 9, 30)
        paused, resumed = local(BERLIN, 2026, 6, 12, 18, 0), local(BERLIN, 2026, 6, 14, 20, 0)
        assert resume(DEFAULT, due, paused, resumed) == due

    def test_remaining_time_is_kept(self) -> None:
        rng = random.Random(11)
        for _ in range(100):
            created = utc(2026, 3, 1) + timedelta(minutes=rng.randint(0, 60 * 24 * 200))
            response, _ = deadlines(DEFAULT, created)
            paused = created + timedelta(minutes=rng.randint(0, 60 * 24 * 2))
            resumed = paused + timedelta(minutes=rng.randint(0, 60 * 24 * 10))
            new_due = resume(DEFAULT, response, paused, resumed)
            if response <= paused:
                assert new_due == response
            else:
                left = minutes_between(DEFAULT, paused, response)
                assert minutes_between(DEFAULT, resumed, new_due) == pytest.approx(left, abs=1e-9)

    def test_met_deadline_stays_met(self) -> None:
        due = utc(2026, 6, 1, 12)
        assert resume(CRITICAL, due, utc(2026, 6, 1, 10), utc(2026, 6, 1, 11), met=True) == due

    def test_breached_before_pause_stays_breached(self) -> None:
        due = utc(2026, 6, 1, 10)
        assert resume(CRITICAL, due, utc(2026, 6, 1, 10, 5), utc(2026, 6, 1, 11)) == due

    def test_resumed_before_paused_is_an_error(self) -> None:
        with pytest.raises(ValueError):
            resume(CRITICAL, utc(2026, 6, 1, 12), utc(2026, 6, 1, 11), utc(2026, 6, 1, 10))

    def test_full_pending_cycle(self) -> None:
        created = utc(2026, 6, 1, 8)
        response, resolution = deadlines(CRITICAL, created)  # 08:15, 12:00
        first_response = utc(2026, 6, 1, 8, 10)
        paused, resumed = utc(2026, 6, 1, 9), utc(2026, 6, 1, 10, 30)
        kwargs = dict(response_due=response, resolution_due=resolution, first_response_at=first_response,
                      resolved_at=None)
        assert sla_state(utc(2026, 6, 1, 10), paused_at=paused, **kwargs) == "paused"
        response = resume(CRITICAL, response, paused, resumed, met=True)
        resolution = resume(CRITICAL, resolution, paused, resumed)
        assert (response, resolution) == (utc(2026, 6, 1, 8, 15), utc(2026, 6, 1, 13, 30))
        kwargs.update(response_due=response, resolution_due=resolution)
        assert sla_state(utc(2026, 6, 1, 12, 0), paused_at=None, **kwargs) == "on_track"

    def test_reopen_resumes_resolution_clock(self) -> None:
        created = utc(2026, 6, 1, 8)
        _, resolution = deadlines(CRITICAL, created)  # 12:00
        resolved, reopened = utc(2026, 6, 1, 11), utc(2026, 6, 2, 9)
        new_resolution = reopen(CRITICAL, resolution, resolved, reopened)
        assert new_resolution == utc(2026, 6, 2, 10)  # the hour that was left
        state = sla_state(utc(2026, 6, 2, 9, 30), response_due=utc(2026, 6, 1, 8, 15),
                          resolution_due=new_resolution, first_response_at=utc(2026, 6, 1, 8, 5),
                          resolved_at=None, paused_at=None)
        assert state == "at_risk"  # running again, within an hour of the deadline

    def test_reopen_business_time(self) -> None:
        _, resolution = deadlines(DEFAULT, local(BERLIN, 2026, 6, 1, 9, 0))  # Mon 1st 09:00 + 80h
        assert resolution == local(BERLIN, 2026, 6, 12, 17, 0)
        resolved = local(BERLIN, 2026, 6, 12, 13, 0)  # 4 business hours left
        reopened = local(BERLIN, 2026, 6, 14, 12, 0)  # Sunday
        assert reopen(DEFAULT, resolution, resolved, reopened) == local(BERLIN, 2026, 6, 15, 13, 0)

    def test_reopen_after_late_resolution_stays_breached(self) -> None:
        resolution = utc(2026, 6, 1, 12)
        assert reopen(CRITICAL, resolution, utc(2026, 6, 1, 13), utc(2026, 6, 2, 9)) == resolution


class TestPolicyChange:
    def test_priority_change_rechooses_and_recomputes(self) -> None:
        created = utc(2026, 6, 1, 8)  # Monday 10:00 Berlin
        ticket = dict(type="problem", organisation=None, group=None)
        old = choose_policy(POLICIES, priority="low", **ticket)
        assert old is DEFAULT
        response, resolution = deadlines(old, created)
        new = choose_policy(POLICIES, priority="critical", **ticket)
        assert new is CRITICAL
        assert change_policy(old, new, created, response_due=response, resolution_due=resolution,
                             first_response_at=None, resolved_at=None) == deadlines(CRITICAL, created)

    def test_met_deadline_is_kept_on_change(self) -> None:
        created = utc(2026, 6, 1, 8)
        response, resolution = deadlines(DEFAULT, created)
        new_response, new_resolution = change_policy(
            DEFAULT, CRITICAL, created, response_due=response, resolution_due=resolution,
            first_response_at=utc(2026, 6, 1, 9), resolved_at=None)
        assert new_response == response
        assert new_resolution == utc(2026, 6, 1, 12)

    def test_paused_time_is_carried_over(self) -> None:
        created = utc(2026, 6, 1, 8)
        low = Policy("low", 60, 600)
        response, resolution = deadlines(low, created)
        resolution = resume(low, resolution, utc(2026, 6, 1, 9), utc(2026, 6, 1, 10))  # pushed 60 min
        _, new_resolution = change_policy(low, CRITICAL, created, response_due=response,
                                          resolution_due=resolution,
                                          first_response_at=utc(2026, 6, 1, 8, 30), resolved_at=None)
        assert new_resolution == created + timedelta(minutes=240 + 60)

    def test_change_to_no_policy_and_from_no_policy(self) -> None:
        created = utc(2026, 6, 1, 8)
        assert change_policy(CRITICAL, None, created, response_due=utc(2026, 6, 1, 8, 15),
                             resolution_due=utc(2026, 6, 1, 12), first_response_at=None,
                             resolved_at=None) == (None, None)
        assert change_policy(None, CRITICAL, created, response_due=None, resolution_due=None,
                             first_response_at=None, resolved_at=None) == deadlines(CRITICAL, created)


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------

RESPONSE_DUE = utc(2026, 6, 1, 10)
RESOLUTION_DUE = utc(2026, 6, 1, 18)


def state(now: datetime, **overrides: datetime | None) -> str:
    kwargs: dict[str, datetime | None] = dict(
        response_due=RESPONSE_DUE, resolution_due=RESOLUTION_DUE, first_response_at=None,
        resolved_at=None, paused_at=None, warn_response_at=utc(2026, 6, 1, 9, 30),
        warn_resolution_at=utc(2026, 6, 1, 16))
    kwargs.update(overrides)
    return sla_state(now, **kwargs)


class TestSlaState:
    def test_none_without_deadlines(self) -> None:
        assert state(utc(2026, 6, 1, 9), response_due=None, resolution_due=None) == "none"

    def test_on_track(self) -> None:
        assert state(utc(2026, 6, 1, 8)) == "on_track"

    def test_at_risk_past_warning(self) -> None:
        # warning at 09:30 with the deadline at 10:00
        assert state(utc(2026, 6, 1, 9, 30), warn_response_at=utc(2026, 6, 1, 8, 30)) == "at_risk"
        assert state(utc(2026, 6, 1, 8, 45), warn_response_at=utc(2026, 6, 1, 8, 30)) == "at_risk"

    def test_at_risk_within_an_hour_without_warning(self) -> None:
        assert state(RESPONSE_DUE - AT_RISK_WITHIN, warn_response_at=None) == "at_risk"
        assert state(RESPONSE_DUE - AT_RISK_WITHIN - timedelta(seconds=1),
                     warn_response_at=None) == "on_track"

    def test_breached_when_running_clock_passes_deadline(self) -> None:
        assert state(RESPONSE_DUE) == "breached"
        assert state(utc(2026, 6, 1, 19), first_response_at=utc(2026, 6, 1, 9)) == "breached"

    def test_breached_when_met_late_even_after_resolution(self) -> None:
        assert state(utc(2026, 6, 2), first_response_at=utc(2026, 6, 1, 10, 1),
                     resolved_at=utc(2026, 6, 1, 12)) == "breached"
        assert state(utc(2026, 6, 2), first_response_at=utc(2026, 6, 1, 9),
                     resolved_at=utc(2026, 6, 1, 18, 1)) == "breached"

    def test_met(self) -> None:
        assert state(utc(2026, 6, 2), first_response_at=utc(2026, 6, 1, 9),
                     resolved_at=utc(2026, 6, 1, 17)) == "met"

    def test_resolution_without_response_stops_both_clocks(self) -> None:
        assert state(utc(2026, 6, 2), resolved_at=utc(2026, 6, 1, 9)) == "met"

    def test_response_met_resolution_running(self) -> None:
        assert state(utc(2026, 6, 1, 12), first_response_at=utc(2026, 6, 1, 9)) == "on_track"
        assert state(utc(2026, 6, 1, 16), first_response_at=utc(2026, 6, 1, 9)) == "at_risk"

    def test_paused_freezes_the_clock(self) -> None:
        # paused at 09:00, long after the (not yet pushed) response deadline: still just paused
        assert state(utc(2026, 6, 1, 20), paused_at=utc(2026, 6, 1, 9)) == "paused"

    def test_breach_before_the_pause_wins_over_paused(self) -> None:
        assert state(utc(2026, 6, 1, 12), paused_at=utc(2026, 6, 1, 10, 30)) == "breached"

    def test_paused_with_all_clocks_met_is_met(self) -> None:
        assert state(utc(2026, 6, 2), paused_at=utc(2026, 6, 1, 17, 30), first_response_at=utc(2026, 6, 1, 9),
                     resolved_at=utc(2026, 6, 1, 17)) == "met"


# ------------------------------------------------------------------------------------------------
# Escalations
# ------------------------------------------------------------------------------------------------


def due_at(now: datetime, sent: tuple[str, ...] = (), **overrides: datetime | None) -> list[Escalation]:
    kwargs: dict[str, datetime | None] = dict(
        response_due=RESPONSE_DUE, resolution_due=RESOLUTION_DUE, first_response_at=None,
        resolved_at=None, paused_at=None, warn_response_at=utc(2026, 6, 1, 9, 30),
        warn_resolution_at=utc(2026, 6, 1, 16))
    kwargs.update(overrides)
    return escalations_due(now, sent=sent, **kwargs)


class TestEscalations:
    def test_nothing_yet(self) -> None:
        assert due_at(utc(2026, 6, 1, 9)) == []

    def test_response_warning(self) -> None:
        assert due_at(utc(2026, 6, 1, 9, 30)) == [("response_warning", utc(2026, 6, 1, 9, 30))]

    def test_response_breach_replaces_its_warning(self) -> None:
        assert due_at(utc(2026, 6, 1, 10)) == [Escalation("response_breach", RESPONSE_DUE)]

    def test_resolution_warning(self) -> None:
        got = due_at(utc(2026, 6, 1, 16), first_response_at=utc(2026, 6, 1, 9))
        assert got == [Escalation("resolution_warning", utc(2026, 6, 1, 16))]

    def test_resolution_breach(self) -> None:
        got = due_at(utc(2026, 6, 1, 18), first_response_at=utc(2026, 6, 1, 9))
        assert got == [Escalation("resolution_breach", RESOLUTION_DUE)]

    def test_all_clocks_late_oldest_first(self) -> None:
        got = due_at(utc(2026, 6, 2))
        assert got == [Escalation("response_breach", RESPONSE_DUE),
                       Escalation("resolution_breach", RESOLUTION_DUE)]
        assert [e.kind for e in due_at(utc(2026, 6, 1, 16, 30))] == ["response_breach",
                                                                      "resolution_warning"]

    def test_sent_kinds_are_not_repeated(self) -> None:
        assert due_at(utc(2026, 6, 1, 9, 45), sent=("response_warning",)) == []
        assert due_at(utc(2026, 6, 2), sent=("response_breach",)) == [
            Escalation("resolution_breach", RESOLUTION_DUE)]

    def test_met_clocks_do_not_escalate(self) -> None:
        assert due_at(utc(2026, 6, 2), first_response_at=utc(2026, 6, 1, 10, 30),
                      resolved_at=utc(2026, 6, 1, 12)) == []

    def test_paused_clock_escalates_only_what_passed_before_the_pause(self) -> None:
        assert due_at(utc(2026, 6, 2), paused_at=utc(2026, 6, 1, 9)) == []
        assert due_at(utc(2026, 6, 2), paused_at=utc(2026, 6, 1, 9, 45)) == [
            Escalation("response_warning", utc(2026, 6, 1, 9, 30))]

    def test_without_warning_times_only_breaches(self) -> None:
        assert due_at(utc(2026, 6, 1, 9, 59), warn_response_at=None) == []
