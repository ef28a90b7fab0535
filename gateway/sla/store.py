"""SLA policies in the database: conversion to the pure `gateway.sla_policy.Policy`, the CLI operations
(add, list, remove) and the optional seed from the config (`[sla] policies = [...]`, checked by
gateway.sla_definitions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.clock import Clock
from gateway.models import SlaPolicyRow, table_of
from gateway.sla_definitions import PolicyError, calendar_from_json, seed_values
from gateway.sla_policy import Policy


# Policies ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredPolicy:
    """A policy row as plain data: the pure policy plus who gets its escalations."""

    policy: Policy
    position: int
    escalate_to: tuple[str, ...]
    notify_assignee: bool
    notify_group: bool
    removed: bool

    @property
    def name(self) -> str:
        return self.policy.name


def to_policy(row: SlaPolicyRow) -> Policy:
    return Policy(name=row.name, response_minutes=row.response_minutes, resolution_minutes=row.resolution_minutes,
                  priorities=frozenset(row.priorities or ()), types=frozenset(row.types or ()),
                  organisations=frozenset(row.organisations or ()), groups=frozenset(row.groups or ()),
                  calendar=calendar_from_json(row.calendar), warn_percent=row.warn_percent,
                  warn_minutes_before=row.warn_minutes_before, active=bool(row.active) and row.removed_at is None)


def to_stored(row: SlaPolicyRow) -> StoredPolicy:
    return StoredPolicy(policy=to_policy(row), position=row.position, escalate_to=tuple(row.escalate_to or ()),
                        notify_assignee=row.notify_assignee, notify_group=row.notify_group,
                        removed=row.removed_at is not None)


class PolicyStore:
    """Policy rows in one session (the caller owns the transaction)."""

    def __init__(self, session: Session, clock: Clock) -> None:
        self.s = session
        self.clock = clock

    def rows(self, *, include_removed: bool = False) -> list[SlaPolicyRow]:
        q = select(SlaPolicyRow).order_by(SlaPolicyRow.position, SlaPolicyRow.id)
        if not include_removed:
            q = q.where(SlaPolicyRow.removed_at.is_(None))
        return list(self.s.scalars(q))

    def policies(self) -> list[StoredPolicy]:
        """Every policy (removed ones too, flagged), in configured order."""
        return [to_stored(r) for r in self.rows(include_removed=True)]

    def get(self, name: str, *, include_removed: bool = False) -> SlaPolicyRow | None:
        row = self.s.scalar(select(SlaPolicyRow).where(SlaPolicyRow.name == name))
        if row is not None and row.removed_at is not None and not include_removed:
            return None
        return row

    def _next_position(self) -> int:
        top = self.s.scalar(select(func.max(SlaPolicyRow.position)).where(SlaPolicyRow.removed_at.is_(None)))
        return (top or 0) + 1

    def add(self, values: Mapping[str, Any], *, position: int | None = None, replace: bool = False,
            source: str = "cli") -> SlaPolicyRow:
        """Add a policy (at the end, or at `position`, 1-based, moving later ones down). A removed policy of
        the same name is brought back; an existing one is an error unless `replace`."""
        _forget(self.s)
        row = self.get(values["name"], include_removed=True)
        if row is not None and row.removed_at is None and not replace:
            raise PolicyError(f"policy {values['name']!r} exists (use --replace to change it)")
        if position is not None:
            if position < 1:
                raise PolicyError("position: 1 or more")
            self.s.execute(update(SlaPolicyRow).where(SlaPolicyRow.position >= position)
                           .values(position=SlaPolicyRow.position + 1))
        if row is None:
            row = SlaPolicyRow(created_at=self.clock(), source=source, **values)
            row.position = position if position is not None else self._next_position()
            self.s.add(row)
        else:
            keep = row.position if row.removed_at is None else None
            for k, v in values.items():
                setattr(row, k, v)
            row.removed_at = None
            row.position = position if position is not None else (keep or self._next_position())
        self.s.flush()
        return row

    def remove(self, name: str) -> bool:
        row = self.get(name)
        if row is None:
            return False
        _forget(self.s)
        row.removed_at = self.clock()
        row.active = False
        self.s.flush()
        return True

    def seed(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert the config's policies that the database does not know yet (by name, removed ones
        included: a seeded policy removed from the CLI stays removed). Safe with concurrent seeders."""
        from gateway.sla.dbutil import insert_ignore

        if not items:
            return []
        _forget(self.s)
        known = set(self.s.scalars(select(SlaPolicyRow.name)))
        added = []
        for item in items:
            values = seed_values(item)
            if values["name"] in known:
                continue
            values.update(position=self._next_position(), source="config", created_at=self.clock())
            if insert_ignore(self.s, table_of(SlaPolicyRow), values, ["name"]) is not None:
                added.append(values["name"])
        return added


# The per-transaction copy of the policies (the listener reads them for every ticket event) -----------------
_POLICIES = "gateway.sla.policies"


def transaction_cache(s: Session, key: str) -> Any:
    """What `s.info[key]` holds for the session's current transaction (None: nothing, or an older one's)."""
    hit = s.info.get(key)
    if hit is not None and hit[0] is not None and hit[0] is s.get_transaction():
        return hit[1]
    return None


def cached_policies(s: Session, store: PolicyStore) -> list[StoredPolicy]:
    """store.policies(), read once per transaction (PolicyStore's changes drop it: `_forget`)."""
    hit: list[StoredPolicy] | None = transaction_cache(s, _POLICIES)
    if hit is None:
        hit = store.policies()
        s.info[_POLICIES] = (s.get_transaction(), hit)
    return list(hit)


def _forget(session: Session) -> None:
    """Policies change in this transaction: drop the per-transaction copy."""
    session.info.pop(_POLICIES, None)
