"""SLA state of one ticket from its stored columns: badge state, running clocks, the next sweep instant.

Pure functions over a Ticket and its SlaClock row (no queries, no clock reads)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from gateway.models import SlaClock, Ticket
from gateway.sla_policy import AT_RISK_WITHIN, sla_state

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

RESPONSE_KINDS = ("response_warning", "response_breach")
RESOLUTION_KINDS = ("resolution_warning", "resolution_breach")
REMINDER = "pending_reminder"


class ClockView(NamedTuple):
    name: str  # response | resolution
    due: datetime
    warn: datetime | None
    running: bool


def clocks(t: Ticket, c: SlaClock | None) -> list[ClockView]:
    out = []
    resolved = t.resolved_at
    if t.response_due_at is not None:
        out.append(ClockView("response", t.response_due_at, c.warn_response_at if c else None,
                             t.first_response_at is None and resolved is None))
    if t.resolution_due_at is not None:
        out.append(ClockView("resolution", t.resolution_due_at, c.warn_resolution_at if c else None,
                             resolved is None))
    return out


def due_for_kind(t: Ticket, kind: str) -> datetime | None:
    return t.response_due_at if kind.startswith("response") else t.resolution_due_at


def ticket_state(t: Ticket, c: SlaClock | None, now: datetime, *,
                 at_risk_within: timedelta = AT_RISK_WITHIN) -> str:
    """One of gateway.sla_policy.STATES: breached, paused, at_risk, on_track, met, none.

    `at_risk_within` (config sla.at_risk_minutes) replaces the pure layer's fixed hour."""
    state = sla_state(now, response_due=t.response_due_at, resolution_due=t.resolution_due_at,
                      first_response_at=t.first_response_at, resolved_at=t.resolved_at,
                      paused_at=t.sla_paused_at, warn_response_at=c.warn_response_at if c else None,
                      warn_resolution_at=c.warn_resolution_at if c else None)
    if state in ("at_risk", "on_track") and at_risk_within != AT_RISK_WITHIN:
        risky = any(v.running and ((v.warn is not None and now >= v.warn) or v.due - now <= at_risk_within)
                    for v in clocks(t, c))
        state = "at_risk" if risky else "on_track"
    return state


def next_at(t: Ticket, warn_response_at: datetime | None, warn_resolution_at: datetime | None,
            sent: Collection[str]) -> datetime | None:
    """The earliest instant at which gateway.sla_policy.escalations_due returns something not in `sent`
    (the kinds already recorded for the current deadlines); None when nothing can become due.

    While paused, only thresholds passed before the pause can be due (then the instant is that threshold);
    the rest waits for the resume, which recomputes this."""
    paused = t.sla_paused_at
    candidates = []
    for name, due, warn, running in (
            ("response", t.response_due_at, warn_response_at,
             t.first_response_at is None and t.resolved_at is None),
            ("resolution", t.resolution_due_at, warn_resolution_at, t.resolved_at is None)):
        if due is None or not running or f"{name}_breach" in sent:
            continue
        at = min(warn, due) if warn is not None and f"{name}_warning" not in sent else due
        if paused is not None and at > paused:
            continue
        candidates.append(at)
    return min(candidates) if candidates else None


def session_ticket_state(session: Session, t: Ticket, now: datetime | None = None, *,
                         at_risk_within: timedelta = AT_RISK_WITHIN) -> str:
    """ticket_state with the clock row loaded from the session (views); `now` defaults to the system time."""

    c = session.get(SlaClock, t.id)
    return ticket_state(t, c, now or datetime.now(UTC), at_risk_within=at_risk_within)
