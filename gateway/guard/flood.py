"""The inbound flood cap: at most `limits.mails_per_sender_per_hour` tickets and comments from one sender
address in the hour before a mail arrived; further mail from that address is quarantined ('flood'), never
answered. Staff and `limits.flood_exempt` (addresses or domains) are exempt.

Pure: the caller counts (the store's `mails_made_by` over `window(arrived)`, one indexed query) and passes the
count in; the window is taken from the mail's arrival time, never from a clock read here, so a replay later
decides the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(hours=1)
REASON = "flood"
COUNTED = ("ticket", "comment")  # the outcomes counted (gateway.store: mails_made_by)


@dataclass(frozen=True)
class FloodPolicy:
    limit: int
    exempt: frozenset[str]  # lowercased addresses and domains (a leading '@' removed)

    @classmethod
    def of(cls, limit: int, exempt: Iterable[str]) -> FloodPolicy:
        return cls(limit, frozenset(e.strip().lower().lstrip("@") for e in exempt))


def window(arrived: datetime) -> tuple[datetime, datetime]:
    """[start, end] of the hour counted for a mail that arrived at `arrived` (aware)."""
    if arrived.tzinfo is None:
        raise ValueError("window needs an aware datetime")
    return arrived - WINDOW, arrived


def exemption(policy: FloodPolicy, sender: str, is_staff: bool) -> str | None:
    """Why this sender is not capped, or None."""
    if is_staff:
        return "staff"
    s = sender.lower()
    if s in policy.exempt:
        return "listed in limits.flood_exempt"
    domain = s.rpartition("@")[2]
    if domain and any(domain == d or domain.endswith("." + d) for d in policy.exempt if "@" not in d):
        return f"domain {domain} listed in limits.flood_exempt"
    return None


def allowed(policy: FloodPolicy, made_in_window: int) -> bool:
    """May one more ticket or comment be made, `made_in_window` being made already in the window?"""
    return made_in_window < policy.limit
