"""Typed outcomes: a handler ends the pipeline by raising one; gateway.pipeline.run decides what follows."""

from __future__ import annotations


class Outcome(Exception):
    """Base: `outcome` is what is recorded on the inbound mail, `reason` says why."""

    outcome = "ignored"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ignore(Outcome):
    """Auto-reply, bounce, bulk or list mail, loops: recorded, never a ticket, never answered.
    The transaction still commits (a bounce may have been attached to its ticket as an internal note)."""

    outcome = "ignored"


class Duplicate(Outcome):
    """The same mail again: nothing new is made."""

    outcome = "duplicate"


class Reject(Outcome):
    """Policy says no (for example an unknown sender under 'reject'). Recorded; nothing is written."""

    outcome = "rejected"


class Quarantine(Outcome):
    """The mail cannot be handled as it is: kept with the reason, for an admin to list and replay."""

    outcome = "quarantined"


class TryLater(Outcome):
    """A temporary condition (the store is unavailable): the mail stays 'received' and is tried again."""

    outcome = "received"


class Wait(Outcome):
    """Not yet: the mail waits for another stored mail to be threaded first (a reply for its original,
    gateway.replywait). Nothing is written, the try is not counted, the mail stays 'received' and is threaded
    again later; the reason goes into its trace."""

    outcome = "received"
