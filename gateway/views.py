"""Plain-data views of tickets and mails for the CLI (`--json`) and the tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Attachment, Comment, InboundMail, Ticket
from gateway.tickets import Tickets


def ticket_numbers(s: Session, ticket_ids: Iterable[int | None]) -> dict[int, int]:
    """Ticket id -> ticket number for the ids given (None ignored), in one query."""
    ids = {i for i in ticket_ids if i is not None}
    if not ids:
        return {}
    return {i: n for i, n in s.execute(select(Ticket.id, Ticket.number).where(Ticket.id.in_(ids)))}


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def attachment_dict(a: Attachment) -> dict[str, Any]:
    return {"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
            "content_id": a.content_id, "inline": a.inline}


def ticket_dict(session: Session, t: Ticket, *, full: bool = True, sla_state: str | None = None) -> dict[str, Any]:
    """`sla_state`: the SLA badge state, computed by the caller (gateway.sla.state; the SLA is a feature the
    core does not import); None when not given."""
    d: dict[str, Any] = {
        "number": t.number,
        "subject": t.subject,
        "status": t.status,
        "priority": t.priority,
        "type": t.type,
        "reporter": {"email": t.reporter.email, "name": t.reporter.name, "role": t.reporter.role},
        "sender": t.sender_email,
        "organisation": t.organisation.name if t.organisation else None,
        "assignee": t.assignee.email if t.assignee else None,
        "group": t.group,
        "watchers": [w.contact.email for w in t.watchers],
        "tags": list(t.tags or []),
        "description": t.description,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
        "closed_at": iso(t.closed_at),
        "sla": {
            "policy": t.sla_policy,
            "response_due_at": iso(t.response_due_at),
            "resolution_due_at": iso(t.resolution_due_at),
            "first_response_at": iso(t.first_response_at),
            "paused_at": iso(t.sla_paused_at),
            "remind_at": iso(t.remind_at),
            "state": sla_state,  # breached | paused | at_risk | on_track | met | none
        },
    }
    if full:
        comments = session.scalars(select(Comment).where(Comment.ticket_id == t.id).order_by(Comment.id)).all()
        atts = session.scalars(select(Attachment).where(Attachment.ticket_id == t.id)
                               .order_by(Attachment.id)).all()
        d["comments"] = [{
            "id": c.id,
            "author": c.author_email or (c.author.email if c.author else None),
            "body": c.body,
            "full_text": c.full_text,
            "html": c.html,
            "internal": c.internal,
            "by_staff": c.by_staff,
            "source": c.source,
            "created_at": iso(c.created_at),
            "attachments": [attachment_dict(a) for a in atts if a.comment_id == c.id],
        } for c in comments]
        d["attachments"] = [attachment_dict(a) for a in atts]
        d["description_html"] = t.description_html
        d["description_full"] = t.description_full  # the first mail's whole text (quoted history included)
        d["links"] = [{"kind": k, "number": n} for k, n in Tickets(session, clock=lambda: t.created_at).links(t)]
    return d


def mail_dict(m: InboundMail, ticket_number: int | None, *, trace: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": m.id, "message_id": m.message_id, "sender": m.sender, "subject": m.subject, "source": m.source,
        "source_ref": m.source_ref, "envelope_from": m.envelope_from, "envelope_to": m.envelope_to,
        "received_at": iso(m.received_at), "processed_at": iso(m.processed_at), "size": m.size,
        "sha256": m.sha256, "outcome": m.outcome, "reason": m.reason, "ticket": ticket_number,
        "attempts": m.attempts,
    }
    if trace:
        d["client_ip"] = m.client_ip
        d["client_helo"] = m.client_helo
        d["authentication"] = dict(m.auth) if m.auth else None
        d["released"] = list(m.released or [])
        d["trace"] = list(m.trace or [])
    return d
