"""Leases: one holder at a time for a named job, across every instance (`serve`, `imap poll`) sharing a database.

A lease is a row in `leases` (gateway.models.Lease): its holder, a generation that counts hand-overs, and an
expiry on the database's clock (every instance compares against the same clock, whatever its own says).
`Lease.claim()` takes the lease when it is free or expired, or renews it when this instance holds it, in one
write transaction (SQLite: BEGIN IMMEDIATE, so claims are serialised; PostgreSQL: the UPDATE locks the row and
re-checks its condition after a concurrent claim committed, so only one of two racing claims matches). A holder
renews every third of the time to live; `held()` is what this process may rely on: the lease was confirmed
less than a time to live ago, measured from before the confirming transaction started (a slow or lost
renewal never stretches it). An instance that dies stops renewing; another takes over once the time to live
has passed. `release()` ends it at once (a clean stop hands over without waiting).

Holders are named per process (`instance_id()`: host, pid, random), so two `App`s in one test process are two
instances, and a second claim from the same instance simply renews.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, case, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.db import insert_ignoring_duplicates, retry_on_conflict, transaction
from gateway.models import Lease as LeaseRow
from gateway.models import table_of

MIN_TTL = 2.0  # seconds: shorter leases would need renewing faster than a drain step can promise


def instance_id() -> str:
    """A name for this process among every instance sharing the database: host:pid:random."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


def db_now(session: Session) -> float:
    """Seconds since the epoch on the database's clock."""
    if session.get_bind().dialect.name == "postgresql":
        sql = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    else:  # SQLite: one file on one host, its clock is this host's
        sql = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    return float(session.execute(text(sql)).scalar_one())


@dataclass(frozen=True)
class LeaseState:
    """A lease as the database has it. `expires_in` <= 0: free (expired or released)."""

    name: str
    holder: str
    generation: int
    expires_in: float
    mine: bool

    @property
    def free(self) -> bool:
        return self.expires_in <= 0

    def describe(self) -> str:
        if self.free:
            return "free" + (f" (last held by {self.holder})" if self.holder else "")
        who = "this instance" if self.mine else self.holder
        return f"held by {who} for {self.expires_in:.0f} s more"


class Lease:
    """One named lease as seen by one holder; see the module docstring."""

    def __init__(self, sessions: sessionmaker[Session], name: str, holder: str, ttl: float, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.name = name
        self.holder = holder
        self.ttl = max(float(ttl), MIN_TTL)
        self._monotonic = monotonic
        self.generation: int | None = None  # the generation this holder took; None: not held
        self._valid_until = 0.0  # monotonic: held (as far as this process may rely on) until then
        self._confirmed = 0.0    # monotonic start of the last successful claim
        self.last: LeaseState | None = None  # what the last claim saw

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def seen(self) -> str:
        """What the last claim saw, for logs and health: 'held by HOLDER for N s more', 'free'."""
        return self.last.describe() if self.last is not None else "not confirmed yet"

    def held(self) -> bool:
        return self.generation is not None and self._monotonic() < self._valid_until

    def due(self) -> bool:
        """A renewal is due (a third of the time to live passed since the last confirmation)."""
        return self._monotonic() - self._confirmed >= self.renew_every

    def renew_in(self) -> float:
        """Seconds until the next renewal is due (0: now)."""
        return max(0.0, self._confirmed + self.renew_every - self._monotonic())

    def claim(self) -> bool:
        """Take the lease (free, expired, or already this instance's) or renew it; True when held. Database
        errors propagate (the lease then stays valid until its local deadline, never longer)."""
        started = self._monotonic()
        state = retry_on_conflict(self._claim_once)
        self.last = state
        if state.mine and not state.free:
            if self.generation is not None and state.generation != self.generation:
                self._valid_until = 0.0  # lost in between and taken again: a new tenure
            self.generation = state.generation
            self._confirmed = started
            self._valid_until = started + self.ttl
            return True
        self.generation = None
        self._valid_until = 0.0
        return False

    def ensure(self) -> bool:
        """Renew when due; True while held. A failed renewal (database trouble) keeps the lease only until its
        local deadline."""
        if self.generation is None:
            return False
        if self.due():
            try:
                return self.claim()
            except Exception:  # noqa: BLE001 -- cannot confirm: rely on the lease only as long as it lasts
                return self.held()
        return self.held()

    def release(self) -> None:
        """Give the lease up now (when held): another instance may take it at once."""
        if self.generation is None:
            return
        gen, self.generation, self._valid_until = self.generation, None, 0.0
        with transaction(self.sessions) as s:
            s.execute(update(LeaseRow).where(LeaseRow.name == self.name, LeaseRow.holder == self.holder,
                                             LeaseRow.generation == gen).values(expires_at=0.0))

    def state(self) -> LeaseState | None:
        """The lease as the database has it now (None: never taken)."""
        with self.sessions() as s:
            now = db_now(s)
            row = s.get(LeaseRow, self.name)
            return None if row is None else self._state(row, now)

    def _state(self, row: LeaseRow, now: float) -> LeaseState:
        return LeaseState(self.name, row.holder, int(row.generation), float(row.expires_at) - now,
                          row.holder == self.holder)

    def _claim_once(self) -> LeaseState:
        with transaction(self.sessions) as s:
            now = db_now(s)
            insert_ignoring_duplicates(s, table_of(LeaseRow), [{
                "name": self.name, "holder": "", "generation": 0, "expires_at": 0.0, "acquired_at": 0.0,
                "renewed_at": 0.0}])
            mine = and_(LeaseRow.holder == self.holder, LeaseRow.expires_at > 0)
            s.execute(update(LeaseRow).where(LeaseRow.name == self.name, or_(mine, LeaseRow.expires_at <= now))
                      .values(holder=self.holder, expires_at=now + self.ttl, renewed_at=now,
                              generation=case((mine, LeaseRow.generation), else_=LeaseRow.generation + 1),
                              acquired_at=case((mine, LeaseRow.acquired_at), else_=now))
                      .execution_options(synchronize_session=False))
            row = s.execute(select(LeaseRow).where(LeaseRow.name == self.name)).scalar_one()
            return self._state(row, now)


__all__ = ["Lease", "LeaseState", "db_now", "instance_id"]
