"""Retry delays: how long to wait after a failed attempt. Pure: no clock read, no sleeping; the caller
passes the time of the failure and, for jitter, its own random source, so tests use fixed values.

Used by outbound delivery (`outbound.retry_base_seconds` doubling up to `outbound.retry_max_seconds`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta


def delay(attempt: int, *, base_seconds: float = 60, factor: float = 2, cap_seconds: float = 3600,
          jitter: float = 0.0, rand: Callable[[], float] | None = None) -> timedelta:
    """Delay before the next try after ``attempt`` failed tries (``attempt >= 1``).

    ``min(cap_seconds, base_seconds * factor ** (attempt - 1))``, then reduced by up to ``jitter``
    (a fraction 0..1) of itself: ``delay * (1 - jitter * rand())``, so the result never exceeds the
    cap and never drops below ``(1 - jitter) * delay``.  ``rand`` returns a float in [0, 1); it
    defaults to ``random.random`` and is only called when ``jitter > 0`` (inject one for determinism).
    Raises ``ValueError`` on ``attempt < 1``, ``base_seconds <= 0``, ``factor < 1``,
    ``cap_seconds < base_seconds`` or ``jitter`` outside 0..1.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt: a whole number >= 1 is needed, got {attempt!r}")
    if not base_seconds > 0:
        raise ValueError(f"base_seconds must be > 0, got {base_seconds!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    if not cap_seconds >= base_seconds:
        raise ValueError(f"cap_seconds must be >= base_seconds, got {cap_seconds!r}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be within 0..1, got {jitter!r}")
    seconds = float(base_seconds)
    if factor > 1:
        for _ in range(attempt - 1):  # at most until the cap: a huge attempt number costs nothing
            seconds *= factor
            if seconds >= cap_seconds:
                break
    seconds = min(seconds, float(cap_seconds))
    if jitter:
        r = (rand or random.random)()
        if not 0 <= r <= 1:
            raise ValueError(f"rand() must return a float in [0, 1), got {r!r}")
        seconds *= 1 - jitter * r
    return timedelta(seconds=seconds)


def next_attempt_at(failed_at: datetime, attempt: int, *, base_seconds: float = 60, factor: float = 2,
                    cap_seconds: float = 3600, jitter: float = 0.0,
                    rand: Callable[[], float] | None = None) -> datetime:
    """When to try again after the ``attempt``-th failure at ``failed_at`` (an aware datetime)."""
    if failed_at.tzinfo is None:
        raise ValueError("failed_at must be timezone-aware")
    return failed_at + delay(attempt, base_seconds=base_seconds, factor=factor, cap_seconds=cap_seconds,
                             jitter=jitter, rand=rand)
