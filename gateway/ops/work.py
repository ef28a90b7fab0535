"""Staff work on tickets, shared by the CLI (`tickets link|unlink|log|merge|watch|unwatch`) and the API
(/api/v1/tickets/{number}/links, /time-entries, /watchers, /merge). Each call is one transaction around
gateway.workflow.Workflow, whose rules mail commands follow too; its errors become NotFound (404), Invalid
(422) and Conflict (409)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.db import transaction
from gateway.models import TimeEntry
from gateway.ops import pages
from gateway.ops.errors import NotFound
from gateway.ops.pages import Page
from gateway.ops.tickets import check_email, rules, workflow
from gateway.views import iso
from gateway.workflow import Workflow, format_minutes

if TYPE_CHECKING:
    from gateway.app import App


def _who(w: Workflow, by: str | None) -> Any:
    return w.contact(by) if by else None


# Links -------------------------------------------------------------------------------------------------------
def list_links(app: App, number: int, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    """The ticket's links as read from it (at most 2 x MAX_LINKS: the cursor is an offset into them)."""
    start = (pages.int_key(pages.decode(cursor), "i") or 0) if cursor else 0
    with app.sessions() as s, rules():
        w = workflow(s, app)
        links = w.links(w.ticket(number))
        items = links[start:start + limit]
        more = start + limit < len(links)
        return Page(items, pages.encode({"i": start + limit}) if more else None)


def link_tickets(app: App, number: int, other: int, kind: str) -> dict[str, Any]:
    """Link #number to #other: 'blocks' (#number blocks #other), 'blocked-by', 'duplicates', 'duplicated-by',
    'caused-by' (#other is the root cause), 'causes', 'relates'. Returns the link, whether it is new and the
    ticket's links."""
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        t, o = w.ticket(number), w.ticket(other)
        kind_read, created = w.link(t, o, kind)
        return {"number": t.number, "other": o.number, "kind": kind_read, "created": created, "links": w.links(t)}


def unlink_tickets(app: App, number: int, other: int, kind: str | None = None) -> dict[str, Any]:
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        t, o = w.ticket(number), w.ticket(other)
        removed = w.unlink(t, o, kind)
        if not removed:
            raise NotFound(f"#{number} and #{other} are not linked" + (f" ({kind})" if kind else ""))
        return {"number": t.number, "other": o.number, "removed": removed, "links": w.links(t)}


# Time --------------------------------------------------------------------------------------------------------
def time_view(e: TimeEntry) -> dict[str, Any]:
    return {"id": e.id, "minutes": e.minutes, "duration": format_minutes(e.minutes), "author": e.author_email,
            "note": e.note, "spent_at": iso(e.spent_at), "created_at": iso(e.created_at)}


def log_time(app: App, number: int, duration: str | int, *, note: str = "", by: str | None = None,
             at: datetime | None = None) -> dict[str, Any]:
    """A time entry ('1h30m', '45m' or minutes) by a contact (default: the help desk). Returns the entry and
    the ticket's total."""
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        t = w.ticket(number)
        e = w.log_time(t, duration, by=_who(w, by), note=note or "", at=at)
        total = w.time_total(t)
        return {**time_view(e), "number": t.number, "total_minutes": total, "total": format_minutes(total)}


def list_time(app: App, number: int, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    """Oldest first; the page carries the ticket's total (total_minutes)."""
    after = pages.int_key(pages.decode(cursor), "id") if cursor else None
    with app.sessions() as s, rules():
        w = workflow(s, app)
        t = w.ticket(number)
        rows = w.time_entries(t, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        total = w.time_total(t)
        return Page([time_view(e) for e in rows], pages.encode({"id": rows[-1].id}) if more and rows else None,
                    {"total_minutes": total, "total": format_minutes(total)})


# Watchers ----------------------------------------------------------------------------------------------------
def list_watchers(app: App, number: int, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    """By when they started watching. mailed: whether the gateway may mail them (gateway.guard.relay)."""
    after = pages.int_key(pages.decode(cursor), "id") if cursor else None
    with app.sessions() as s, rules():
        t = workflow(s, app).ticket(number)
        rows = [x for x in sorted(t.watchers, key=lambda x: x.id) if after is None or x.id > after]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([{"email": x.contact.email, "name": x.contact.name,
                      "mailed": x.vouched is not None or x.contact.vouched is not None} for x in rows],
                    pages.encode({"id": rows[-1].id}) if more and rows else None)


def watch(app: App, number: int, email: str) -> dict[str, Any]:
    email = check_email(email, "email")
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        t = w.ticket(number)
        added = w.watch(t, email)
        return {"number": t.number, "email": email, "added": added,
                "watchers": [x.contact.email for x in t.watchers]}


def unwatch(app: App, number: int, email: str) -> dict[str, Any]:
    email = check_email(email, "email")
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        t = w.ticket(number)
        if not w.unwatch(t, email):
            raise NotFound(f"{email} does not watch #{number}")
        return {"number": t.number, "email": email, "removed": True,
                "watchers": [x.contact.email for x in t.watchers]}


# Merge -------------------------------------------------------------------------------------------------------
def merge(app: App, number: int, into: int, *, by: str | None = None) -> dict[str, Any]:
    """Merge #number into #into: its comments, attachments, time entries, watchers (and its reporter, as a
    watcher) and Message-IDs move; it closes and points to #into; mail to it lands on #into."""
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        m = w.merge(w.ticket(number), w.ticket(into), by=_who(w, by))
        return {"number": m.source, "into": m.target, "moved": {
            "comments": m.comments, "attachments": m.attachments, "time_entries": m.time_entries,
            "watchers": m.watchers, "message_ids": m.message_ids}}
