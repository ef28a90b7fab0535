"""Unit tests for gateway.backoff: pure retry delays, fixed times and injected random sources only."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.backoff import delay, next_attempt_at

T0 = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


class TestDelay:
    def test_exponential_growth(self) -> None:
        assert [delay(n).total_seconds() for n in range(1, 7)] == [60, 120, 240, 480, 960, 1920]

    def test_cap(self) -> None:
        assert delay(7) == timedelta(hours=1)
        assert delay(10_000) == timedelta(hours=1)
        assert delay(3, base_seconds=10, factor=3, cap_seconds=60) == timedelta(seconds=60)

    def test_huge_attempt_numbers_stop_at_the_cap(self) -> None:
        assert delay(10**9, base_seconds=1, cap_seconds=300) == timedelta(minutes=5)

    def test_factor_one_is_constant(self) -> None:
        assert delay(50, base_seconds=30, factor=1) == timedelta(seconds=30)

    def test_deterministic_jitter_with_injected_random(self) -> None:
        assert delay(3, jitter=0.5, rand=lambda: 0.0) == timedelta(seconds=240)
        assert delay(3, jitter=0.5, rand=lambda: 0.5) == timedelta(seconds=180)
        assert delay(20, jitter=0.25, rand=lambda: 0.999) <= timedelta(hours=1)
        rng_a, rng_b = random.Random(42), random.Random(42)
        a = [delay(n, jitter=0.3, rand=rng_a.random) for n in range(1, 12)]
        b = [delay(n, jitter=0.3, rand=rng_b.random) for n in range(1, 12)]
        assert a == b
        for n, d in enumerate(a, start=1):
            full = min(60 * 2 ** (n - 1), 3600)
            assert 0.7 * full <= d.total_seconds() <= full

    def test_no_jitter_does_not_call_rand(self) -> None:
        def boom() -> float:
            raise AssertionError("rand called")

        assert delay(2, rand=boom) == timedelta(minutes=2)

    def test_a_random_source_out_of_range_is_refused(self) -> None:
        with pytest.raises(ValueError, match="rand"):
            delay(2, jitter=0.5, rand=lambda: 1.5)

    @pytest.mark.parametrize("attempt, kwargs", [
        (0, {}), (-1, {}), (True, {}), (1, {"base_seconds": 0}), (1, {"factor": 0.5}),
        (1, {"cap_seconds": 10}), (1, {"jitter": 1.5}), (1, {"jitter": -0.1}),
    ])
    def test_invalid(self, attempt: Any, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            delay(attempt, **kwargs)


class TestNextAttemptAt:
    def test_adds_the_delay_to_the_time_of_failure(self) -> None:
        assert next_attempt_at(T0, 1) == T0 + timedelta(minutes=1)
        assert next_attempt_at(T0, 3, base_seconds=10) == T0 + timedelta(seconds=40)
        assert next_attempt_at(T0, 99, base_seconds=10, cap_seconds=900) == T0 + timedelta(minutes=15)

    def test_a_naive_time_is_refused(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            next_attempt_at(T0.replace(tzinfo=None), 1)
