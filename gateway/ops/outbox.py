"""Outgoing mail, shared by the CLI (`outbox list|retry`) and the API (/api/v1/outbox)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.models import OUTBOX_STATUSES, OutboxMail
from gateway.ops import pages
from gateway.ops.errors import Conflict, Invalid, NotFound
from gateway.ops.pages import Page
from gateway.views import iso, ticket_numbers

if TYPE_CHECKING:
    from gateway.app import App


def outbox_view(r: OutboxMail, number: int | None) -> dict[str, Any]:
    return {"id": r.id, "created_at": iso(r.created_at), "ticket": number, "event": r.event,
            "recipient": r.recipient, "subject": r.subject, "message_id": r.message_id, "status": r.status,
            "attempts": r.attempts, "next_attempt_at": iso(r.next_attempt_at), "sent_at": iso(r.sent_at),
            "last_error": r.last_error}


def list_outbox(app: App, *, status: str | None = None, limit: int = pages.DEFAULT_LIMIT,
                cursor: str | None = None) -> Page:
    """Newest first."""
    if status and status not in OUTBOX_STATUSES:
        raise Invalid(f"status: one of {', '.join(OUTBOX_STATUSES)}", field="status")
    before = pages.int_key(pages.decode(cursor), "id") if cursor else None
    with app.sessions() as s:
        q = select(OutboxMail).order_by(OutboxMail.id.desc())
        if status:
            q = q.where(OutboxMail.status == status)
        if before is not None:
            q = q.where(OutboxMail.id < before)
        rows = list(s.scalars(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        numbers = ticket_numbers(s, [r.ticket_id for r in rows])
        items = [outbox_view(r, numbers.get(r.ticket_id or 0)) for r in rows]
    return Page(items, pages.encode({"id": rows[-1].id}) if more and rows else None)


def retry_outbox(app: App, outbox_id: int) -> dict[str, Any]:
    """Queue a failed or deferred mail again, due now (a sent or suppressed one: conflict)."""
    from gateway.outbound.sender import retry

    try:
        row = retry(app, outbox_id)
    except KeyError:
        raise NotFound(f"no outbox mail {outbox_id}") from None
    except ValueError as e:
        raise Conflict(str(e.args[0] if e.args else e)) from None
    with app.sessions() as s:
        return outbox_view(row, ticket_numbers(s, [row.ticket_id]).get(row.ticket_id or 0))
