"""Inbound mail, shared by the CLI (`mail list|show|replay`) and the API (/api/v1/mail)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.db import StoreUnavailable
from gateway.models import MAIL_OUTCOMES, InboundMail
from gateway.ops import pages
from gateway.ops.errors import Conflict, Invalid, NotFound
from gateway.ops.pages import Page
from gateway.views import mail_dict, ticket_numbers

if TYPE_CHECKING:
    from gateway.app import App


def list_mail(app: App, *, status: str | None = None, limit: int = pages.DEFAULT_LIMIT,
              cursor: str | None = None) -> Page:
    """Newest first; status: one outcome (e.g. quarantined)."""
    if status and status not in MAIL_OUTCOMES:
        raise Invalid(f"status: one of {', '.join(MAIL_OUTCOMES)}", field="status")
    before = pages.int_key(pages.decode(cursor), "id") if cursor else None
    with app.sessions() as s:
        q = select(InboundMail).order_by(InboundMail.id.desc())
        if status:
            q = q.where(InboundMail.outcome == status)
        if before is not None:
            q = q.where(InboundMail.id < before)
        mails = list(s.scalars(q.limit(limit + 1)))
        more = len(mails) > limit
        mails = mails[:limit]
        numbers = ticket_numbers(s, [m.ticket_id for m in mails])
        items = [mail_dict(m, numbers.get(m.ticket_id or 0)) for m in mails]
    return Page(items, pages.encode({"id": mails[-1].id}) if more and mails else None)


def get_mail(app: App, mail_id: int, *, trace: bool = True) -> dict[str, Any]:
    with app.sessions() as s:
        m = s.get(InboundMail, mail_id)
        if m is None:
            raise NotFound(f"no mail {mail_id}")
        return mail_dict(m, ticket_numbers(s, [m.ticket_id]).get(m.ticket_id or 0), trace=trace)


def raw_mail(app: App, mail_id: int) -> bytes:
    with app.sessions() as s:
        m = s.get(InboundMail, mail_id)
        if m is None:
            raise NotFound(f"no mail {mail_id}")
        return bytes(m.raw.data)


def replay_mail(app: App, mail_id: int) -> dict[str, Any]:
    """Run a quarantined or rejected mail through the pipeline again; returns the result. StoreUnavailable
    passes through (the CLI exits 75, the API answers 503)."""
    try:
        r = app.intake().replay(mail_id)
    except KeyError:
        raise NotFound(f"no mail {mail_id}") from None
    except StoreUnavailable:
        raise
    except ValueError as e:
        raise Conflict(str(e.args[0] if e.args else e)) from None
    return r.as_dict()
