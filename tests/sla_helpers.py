"""Helpers for the SLA tests: policies, tickets and changes in one transaction each."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from gateway.db import transaction
from gateway.models import OutboxMail, SlaClock, SlaEscalation, Ticket
from gateway.sla.store import PolicyStore
from gateway.sla_definitions import validate_values
from gateway.tickets import Directory, Tickets


def add_policy(app: Any, name: str, **kw: Any) -> None:
    position = kw.pop("position", None)
    with transaction(app.sessions) as s:
        PolicyStore(s, app.clock).add(validate_values(name, **kw), position=position)


def staff(app: Any, email: str = "bob@example.com", name: str = "Bob Staff") -> int:
    with transaction(app.sessions) as s:
        return Directory(s, app.clock).add_contact(email, name=name, staff=True).id


def new_ticket(app: Any, *, priority: str = "critical", type: str = "incident", group: str | None = None,
               assignee: str | None = None, reporter: str = "alice@customer.example",
               organisation: str | None = None, subject: str = "Site down") -> int:
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        org = d.add_organisation(organisation) if organisation else None
        rep = d.add_contact(reporter, name="Alice", organisation=org)
        tk = Tickets(s, clock=app.clock, listeners=app.listeners)
        t = tk.create(subject=subject, reporter=rep, priority=priority, type=type, group=group)
        if assignee:
            tk.change(t, assignee=d.contact(assignee))
        return t.number


def change(app: Any, number: int, by: str | None = None, **fields: Any) -> dict[str, Any]:
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        tk = Tickets(s, clock=app.clock, listeners=app.listeners)
        t = tk.get(number)
        if "assignee" in fields and isinstance(fields["assignee"], str):
            fields["assignee"] = d.contact(fields["assignee"])
        return tk.change(t, by=d.contact(by) if by else None, **fields)


def comment(app: Any, number: int, author: str, *, internal: bool = False, source: str = "mail") -> None:
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        tk = Tickets(s, clock=app.clock, listeners=app.listeners)
        c = d.contact(author) or d.add_contact(author)
        tk.add_comment(tk.get(number), author=c, author_email=author, body="hello", internal=internal,
                       source=source)


def ticket(app: Any, number: int) -> dict[str, Any]:
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == number))
        c = s.get(SlaClock, t.id)
        return {"policy": t.sla_policy, "response_due": t.response_due_at, "resolution_due": t.resolution_due_at,
                "first_response": t.first_response_at, "paused": t.sla_paused_at, "remind_at": t.remind_at,
                "status": t.status, "next_at": c.next_at if c else None,
                "warn_response": c.warn_response_at if c else None,
                "warn_resolution": c.warn_resolution_at if c else None}


def escalations(app: Any, number: int | None = None) -> list[tuple[int, str, datetime, bool]]:
    with app.sessions() as s:
        q = (select(Ticket.number, SlaEscalation.kind, SlaEscalation.deadline, SlaEscalation.suppressed)
             .join(Ticket, Ticket.id == SlaEscalation.ticket_id).order_by(SlaEscalation.id))
        if number is not None:
            q = q.where(Ticket.number == number)
        return [tuple(r) for r in s.execute(q)]


def outbox(app: Any, prefix: str = "sla_") -> list[tuple[str, str]]:
    with app.sessions() as s:
        return [(e, r) for e, r in s.execute(select(OutboxMail.event, OutboxMail.recipient)
                                             .where(OutboxMail.event.like(prefix + "%")).order_by(OutboxMail.id))]
