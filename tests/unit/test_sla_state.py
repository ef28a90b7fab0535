"""Badge state and the sweep's next instant from a ticket's stored columns (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.models import SlaClock, Ticket
from gateway.sla.mail import duration_text
from gateway.sla.state import next_at, ticket_state

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def tk(**kw) -> Ticket:
    base = dict(created_at=T0, response_due_at=T0 + 30 * M, resolution_due_at=T0 + 240 * M, first_response_at=None,
                resolved_at=None, sla_paused_at=None)
    base.update(kw)
    return Ticket(**base)


def clk(**kw) -> SlaClock:
    return SlaClock(warn_response_at=kw.get("wr", T0 + 24 * M), warn_resolution_at=kw.get("wz", T0 + 192 * M))


def test_next_at_warning_then_breach_then_resolution() -> None:
    t = tk()
    assert next_at(t, T0 + 24 * M, T0 + 192 * M, set()) == T0 + 24 * M
    assert next_at(t, T0 + 24 * M, T0 + 192 * M, {"response_warning"}) == T0 + 30 * M
    assert next_at(t, T0 + 24 * M, T0 + 192 * M, {"response_warning", "response_breach"}) == T0 + 192 * M
    assert next_at(t, None, None, set()) == T0 + 30 * M  # no warnings configured
    met = tk(first_response_at=T0 + 5 * M)
    assert next_at(met, T0 + 24 * M, T0 + 192 * M, set()) == T0 + 192 * M
    assert next_at(tk(resolved_at=T0 + 10 * M), T0 + 24 * M, T0 + 192 * M, set()) is None


def test_next_at_while_paused() -> None:
    assert next_at(tk(sla_paused_at=T0 + 10 * M), T0 + 24 * M, T0 + 192 * M, set()) is None
    # a threshold passed before the pause is still due
    assert next_at(tk(sla_paused_at=T0 + 25 * M), T0 + 24 * M, T0 + 192 * M, set()) == T0 + 24 * M


def test_ticket_state_and_at_risk_window() -> None:
    c = clk()
    assert ticket_state(tk(resolution_due_at=None, response_due_at=None), None, T0) == "none"
    t = tk(response_due_at=T0 + 300 * M, resolution_due_at=T0 + 600 * M)
    c2 = clk(wr=T0 + 240 * M, wz=T0 + 480 * M)
    assert ticket_state(t, c2, T0) == "on_track"
    assert ticket_state(t, c2, T0 + 250 * M) == "at_risk"  # past the warning
    assert ticket_state(t, c2, T0 + 200 * M, at_risk_within=timedelta(hours=2)) == "at_risk"  # window
    assert ticket_state(tk(), c, T0 + 31 * M) == "breached"
    assert ticket_state(tk(sla_paused_at=T0 + 5 * M), c, T0 + 100 * M) == "paused"
    assert ticket_state(tk(first_response_at=T0 + M, resolved_at=T0 + 2 * M), c, T0 + 999 * M) == "met"
    # the configured window replaces the pure layer's hour both ways
    assert ticket_state(tk(), clk(wr=None, wz=None), T0, at_risk_within=timedelta(minutes=10)) == "on_track"
    assert ticket_state(tk(), clk(wr=None, wz=None), T0 + 21 * M, at_risk_within=timedelta(minutes=10)) == "at_risk"


def test_duration_text() -> None:
    assert duration_text(0) == "0 minutes"
    assert duration_text(61) == "1 hour 1 minute"
    assert duration_text(-(2 * 1440 + 5)) == "2 days 5 minutes"
