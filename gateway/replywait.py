"""Leaf, pure: how long a reply may wait for its original (the `wait` handler and serve's threading workers).

A reply can be threaded before the mail it answers when both are stored but not threaded yet: they were stored
by two instances sharing one database, or by one instance into two batches that its workers run in another
order, or the reply simply arrived first. Threaded first, the reply would find no ticket for its In-Reply-To and
open one of its own. So it waits: it stays `received` and is threaded again a little later, after its original.

Everything here is bounded, because References is written by the sender: at most MAX_REFS of the Message-IDs a
mail names are looked at, and a mail waits at most `gateway.reply_wait_seconds` from its arrival, however many
mails it names and whatever became of them (a mail that is never threaded, a quarantined one, a mail naming a
mail that names it). After that it is threaded without its original, as before.
"""

from __future__ import annotations

MAX_REFS = 10  # Message-IDs of a mail looked at for a stored original (In-Reply-To first, then the newest References)
FIRST_RETRY = 0.5  # seconds before the first retry of a waiting reply (serve)


def referenced(in_reply_to: list[str], references: list[str], own: str | None) -> list[str]:
    """The Message-IDs to look for among the stored mails not threaded yet: In-Reply-To, then References from
    the newest (the nearest parents), the mail's own Message-ID left out, at most MAX_REFS."""
    out = [m for m in dict.fromkeys(in_reply_to + list(reversed(references))) if m != own]
    return out[:MAX_REFS]


def may_wait(age_seconds: float, limit_seconds: float) -> bool:
    """Whether a mail that arrived `age_seconds` ago may still wait for its original (limit 0: never)."""
    return 0 <= age_seconds < limit_seconds


def retry_after(age_seconds: float, limit_seconds: float) -> float:
    """Seconds until a waiting mail is tried again: when it is twice as old as now (at least FIRST_RETRY later),
    so that a mail is tried about log2(limit / FIRST_RETRY) times in all; not later than its limit."""
    return max(FIRST_RETRY, min(age_seconds, limit_seconds - age_seconds))
