"""`sla report`: open tickets at risk and breached, by group and by assignee."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from gateway.models import SlaClock, Ticket
from gateway.sla.state import clocks, ticket_state
from gateway.views import iso


def report(app: Any, now: datetime) -> dict[str, Any]:
    window = timedelta(minutes=app.config.get("sla", "at_risk_minutes"))
    horizon = now + window
    rows: list[dict[str, Any]] = []
    totals = {"breached": 0, "at_risk": 0, "paused": 0}
    with app.sessions() as s:
        q = (select(Ticket, SlaClock).outerjoin(SlaClock, SlaClock.ticket_id == Ticket.id)
             .where(Ticket.status.in_(("open", "in_progress", "pending")),
                    or_(Ticket.response_due_at <= horizon, Ticket.resolution_due_at <= horizon,
                        SlaClock.warn_response_at <= now, SlaClock.warn_resolution_at <= now,
                        Ticket.sla_paused_at.isnot(None)))
             .order_by(Ticket.number))
        for t, c in s.execute(q).unique():
            state = ticket_state(t, c, now, at_risk_within=window)
            if state == "paused":
                totals["paused"] += 1
                continue
            if state not in ("breached", "at_risk"):
                continue
            totals[state] += 1
            running = [v for v in clocks(t, c) if v.running] or clocks(t, c)
            nearest = min(running, key=lambda v: v.due) if running else None
            rows.append({"number": t.number, "subject": t.subject, "state": state, "priority": t.priority,
                         "status": t.status, "policy": t.sla_policy, "group": t.group,
                         "assignee": t.assignee.email if t.assignee else None,
                         "clock": nearest.name if nearest else None,
                         "due": iso(nearest.due) if nearest else ""})
    rows.sort(key=lambda r: (r["state"] != "breached", r["due"] or ""))

    def grouped(key: str, none: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in rows:
            e = out.setdefault(r[key] or none, {"breached": 0, "at_risk": 0, "tickets": []})
            e[r["state"]] += 1
            e["tickets"].append(r)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1]["breached"], -kv[1]["at_risk"], kv[0])))

    return {"now": iso(now), "totals": totals, "by_group": grouped("group", "(no group)"),
            "by_assignee": grouped("assignee", "(unassigned)")}
