"""Imports of old mail (`ingest` of files, Maildirs and mboxes): when did it happen?

An imported mail was delivered long ago. Its ticket or comment is dated by the mail's own Date header when
that is plausible: not before FLOOR (a Date of 1970 is a broken clock or an empty field, not history) and not
later than the import's "now" plus SKEW (a sender's clock a little fast is clamped to now; further in the
future is a broken clock). Anything else, or no Date at all, dates it at the import.

Pure: the caller passes its clock's now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

FLOOR = datetime(1990, 1, 1, tzinfo=UTC)
SKEW = timedelta(hours=1)


def written_at(date: datetime | None, now: datetime, *, floor: datetime = FLOOR,
               skew: timedelta = SKEW) -> datetime | None:
    """The instant to date an imported mail's ticket or comment at, or None for "now" (no plausible Date)."""
    if date is None:
        return None
    if date.tzinfo is None:  # a Date without a zone is read as UTC (as gateway.mime does)
        date = date.replace(tzinfo=UTC)
    if date < floor or date > now + skew:
        return None
    return min(date, now)
