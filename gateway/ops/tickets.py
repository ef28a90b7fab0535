"""Ticket operations shared by the CLI (`tickets ...`) and the API (/api/v1/tickets): list with filters and
pagination, get, create (idempotent by key or external id), change, comments with attachments, attachment
download. Changes go through gateway.tickets.Tickets, so notifications and SLA follow as for mail."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, cast, exists, false, func, literal, or_, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from gateway.db import retry_on_conflict, transaction
from gateway.guard.relay import ADMIN
from gateway.models import (
    PRIORITIES,
    STATUSES,
    TYPES,
    ApiIdempotency,
    Attachment,
    Comment,
    Contact,
    Organisation,
    SlaClock,
    Ticket,
)
from gateway.ops import pages
from gateway.ops.errors import Conflict, Invalid, NotFound
from gateway.ops.pages import Page
from gateway.tickets import Directory, InvalidChange, Tickets, normalise_email
from gateway.views import attachment_dict, iso, ticket_dict
from gateway.workflow import MAX_TAGS, NoSuch, Refused, Workflow, clean_tags

if TYPE_CHECKING:
    from gateway.app import App

_ADDR = re.compile(r"^[^@\s<>,;\"]{1,200}@[^@\s<>,;\"]{1,255}$")
_CTYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")
MAX_WATCHERS = 100
MAX_ATTACHMENTS = 20
CHANGEABLE = ("status", "priority", "type", "assignee", "organisation", "group", "tags", "add_tags", "remove_tags",
              "remind_at")


@contextmanager
def rules() -> Iterator[None]:
    """The errors of gateway.workflow (the rules mail commands follow too) as the operations' errors."""
    try:
        yield
    except NoSuch as e:
        raise NotFound(str(e)) from None
    except Refused as e:
        raise Conflict(str(e)) from None
    except InvalidChange as e:
        text = str(e)
        head = text.split(":", 1)[0]
        raise Invalid(text, field=head if ":" in text and head.isidentifier() else None) from None


def workflow(s: Session, app: App) -> Workflow:
    return Workflow.of(s, clock=app.clock, listeners=app.listeners, config=app.config)


def check_email(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ADDR.match(value.strip()):
        raise Invalid(f"{what}: not an email address: {value!r}", field=what)
    return normalise_email(value)


def _choice(value: Any, what: str, known: tuple[str, ...]) -> str:
    if value not in known:
        raise Invalid(f"{what}: one of {', '.join(known)} (got {value!r})", field=what)
    return str(value)


def _tags(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise Invalid(f"tags: a list of at most {MAX_TAGS} names", field="tags")
    try:
        return clean_tags(value)
    except InvalidChange as e:
        raise Invalid(str(e), field="tags") from None


# Views -------------------------------------------------------------------------------------------------------
def _view(s: Session, t: Ticket, now: datetime, *, full: bool = False) -> dict[str, Any]:
    """The ticket as the API and `--json` show it. full: with every comment and attachment (the CLI's `show`);
    else comments and attachments are separate, paginated lists."""
    from gateway.sla.state import session_ticket_state

    d = ticket_dict(s, t, full=full, sla_state=session_ticket_state(s, t, now))
    if not full:
        d["description_html"] = t.description_html
    d["external_id"] = s.scalar(select(ApiIdempotency.key).where(ApiIdempotency.ticket_id == t.id,
                                                                 ApiIdempotency.key.like("ext:%")).limit(1))
    if d["external_id"]:
        d["external_id"] = d["external_id"][4:]
    d["comment_count"] = s.scalar(select(func.count()).select_from(Comment).where(Comment.ticket_id == t.id))
    w = Workflow(s, clock=lambda: now)
    d["links"] = w.links(t)
    d["time_minutes"] = w.time_total(t)
    d["merged_into"] = w.tickets.followed(t).number if t.merged_into_id is not None else None
    d["customer_spoke_last"] = t.customer_spoke_last
    return d


def _ticket(s: Session, app: App, number: int) -> Ticket:
    t = Tickets(s, clock=app.clock).get(number)
    if t is None:
        raise NotFound(f"no ticket #{number}")
    return t


def get_ticket(app: App, number: int, *, full: bool = False) -> dict[str, Any]:
    with app.sessions() as s:
        return _view(s, _ticket(s, app, number), app.clock(), full=full)


# Listing -----------------------------------------------------------------------------------------------------
def _has_tag(s: Session, tag: str) -> Any:
    if s.get_bind().dialect.name == "postgresql":
        return cast(Ticket.tags, JSONB).contains(cast(literal(json.dumps([tag])), JSONB))
    each = func.json_each(Ticket.tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == tag))


def _filters(s: Session, *, status: str | None, priority: str | None, type: str | None, assignee: str | None,
             group: str | None, organisation: str | None, tag: str | None) -> list[Any]:
    cond: list[Any] = []
    if status:
        cond.append(Ticket.status == _choice(status, "status", STATUSES))
    if priority:
        cond.append(Ticket.priority == _choice(priority, "priority", PRIORITIES))
    if type:
        cond.append(Ticket.type == _choice(type, "type", TYPES))
    if assignee:
        if assignee.lower() == "none":
            cond.append(Ticket.assignee_id.is_(None))
        else:
            cond.append(Ticket.assignee_id == select(Contact.id).where(
                Contact.email == check_email(assignee, "assignee")).scalar_subquery())
    if group:
        cond.append(Ticket.group.is_(None) if group.lower() == "none" else Ticket.group == group)
    if organisation:
        cond.append(Ticket.organisation_id == select(Organisation.id).where(
            Organisation.name == organisation).scalar_subquery())
    if tag:
        cond.append(_has_tag(s, tag))
    return cond


SLA_STATES = ("breached", "paused", "at_risk", "on_track", "met", "none")
MAX_TEXT = 200
MAX_SCAN = 2000  # tickets looked at for one page when filtering by SLA state (computed, not stored)


@dataclass
class _Phase:
    """One part of the list's order: its condition, its order and its keyset."""

    name: str
    cond: Any
    order: tuple[Any, ...]
    reminder: bool = False

    def key(self, t: Ticket) -> dict[str, Any]:
        if self.reminder:
            assert t.remind_at is not None
            return {"ra": t.remind_at.isoformat(), "n": t.number}
        return {"n": t.number}

    def after(self, key: dict[str, Any]) -> Any:
        if "n" not in key:
            return true()
        n = pages.int_key(key, "n")
        if self.reminder:
            try:
                ra = datetime.fromisoformat(pages.str_key(key, "ra") or "")
            except ValueError:
                raise Invalid("cursor: not one this server gave", field="cursor") from None
            return or_(Ticket.remind_at > ra, and_(Ticket.remind_at == ra, Ticket.number > n))
        return Ticket.number < n


def _phases(now: datetime, with_reminders: bool) -> list[_Phase]:
    """Pending reminders due today (soonest first), then the tickets where the customer spoke last and waits
    for an answer, then the rest; newest first within each."""
    tomorrow = (now.astimezone(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    due = and_(Ticket.status == "pending", Ticket.remind_at.isnot(None), Ticket.remind_at < tomorrow) \
        if with_reminders else false()
    waiting = and_(Ticket.customer_spoke_last.is_(True), Ticket.status.notin_(("resolved", "closed")))
    out = [_Phase("r", due, (Ticket.remind_at, Ticket.number), reminder=True)] if with_reminders else []
    return out + [_Phase("c", and_(~due, waiting), (Ticket.number.desc(),)),
                  _Phase("n", and_(~due, ~waiting), (Ticket.number.desc(),))]


def _text_filter(text: str) -> Any:
    if len(text) > MAX_TEXT:
        raise Invalid(f"text: at most {MAX_TEXT} characters", field="text")
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(Ticket.subject.ilike(pattern, escape="\\"), Ticket.description.ilike(pattern, escape="\\"))


class _Scan:
    """Fills one page from the phases, from a cursor on; with an SLA state wanted, tickets are looked at in
    batches and at most MAX_SCAN of them (a short page then carries a cursor)."""

    def __init__(self, s: Session, app: App, now: datetime, limit: int, sla: str | None) -> None:
        self.s, self.app, self.now, self.limit, self.sla = s, app, now, limit, sla
        self.found: list[tuple[Ticket, bool]] = []
        self.scanned = 0

    def matching(self, rows: list[Ticket]) -> set[int]:
        if self.sla is None:
            return {t.id for t in rows}
        from gateway.sla.state import ticket_state

        window = timedelta(minutes=self.app.config.get("sla", "at_risk_minutes"))
        clocks = {k.ticket_id: k for k in self.s.scalars(select(SlaClock).where(
            SlaClock.ticket_id.in_([t.id for t in rows])))} if rows else {}
        return {t.id for t in rows if ticket_state(t, clocks.get(t.id), self.now, at_risk_within=window) == self.sla}

    def run(self, phases: list[_Phase], cond: list[Any], cursor: dict[str, Any] | None) -> dict[str, Any] | None:
        names = [p.name for p in phases]
        start = names.index(pages.str_key(cursor, "p") or names[0]) if cursor and cursor.get("p") in names else 0
        batch = self.limit + 1 if self.sla is None else 200
        for i, phase in enumerate(phases[start:]):
            key: dict[str, Any] = dict(cursor or {}) if i == 0 else {}
            while True:
                q = select(Ticket).where(*cond, phase.cond, phase.after(key)).order_by(*phase.order)
                rows = list(self.s.scalars(q.limit(batch)))
                keep = self.matching(rows)
                for t in rows:
                    if len(self.found) == self.limit:
                        return {**key, "p": phase.name}
                    self.scanned += 1
                    key = phase.key(t)
                    if t.id in keep:
                        self.found.append((t, phase.reminder))
                    if self.scanned >= MAX_SCAN and len(self.found) < self.limit:
                        return {**key, "p": phase.name}
                if len(rows) < batch:
                    break
        return None


def list_tickets(app: App, *, status: str | None = None, priority: str | None = None, type: str | None = None,
                 assignee: str | None = None, group: str | None = None, organisation: str | None = None,
                 tag: str | None = None, sla: str | None = None, text: str | None = None,
                 limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    """The work queue: pending reminders due today first (soonest first), then tickets where the customer spoke
    last, then the rest, newest first within each. Filters: status, priority, type, assignee ('none'), group
    ('none'), organisation, tag, sla (an SLA state), text (in the subject or description). The cursor keeps the
    instant the first page was made, so the parts stay apart across pages."""
    c = pages.decode(cursor)
    now = app.clock()
    if c is not None:
        try:
            now = datetime.fromisoformat(pages.str_key(c, "now") or "")
        except ValueError:
            raise Invalid("cursor: not one this server gave", field="cursor") from None
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    if sla:
        _choice(sla, "sla", SLA_STATES)
    with app.sessions() as s:
        cond = _filters(s, status=status, priority=priority, type=type, assignee=assignee, group=group,
                        organisation=organisation, tag=tag)
        if text:
            cond.append(_text_filter(text))
        scan = _Scan(s, app, now, limit, sla or None)
        nxt = scan.run(_phases(now, status in (None, "", "pending")), cond, c)
        items = _list_views(s, app, [t for t, _ in scan.found], now)
        for item, (_, reminder) in zip(items, scan.found, strict=True):
            item["sla"]["reminder_due"] = reminder
    if nxt is not None:
        nxt["now"] = now.isoformat()
    return Page(items, pages.encode(nxt) if nxt is not None else None)


def _list_views(s: Session, app: App, tickets: list[Ticket], now: datetime) -> list[dict[str, Any]]:
    from gateway.sla.state import ticket_state

    window = timedelta(minutes=app.config.get("sla", "at_risk_minutes"))
    clocks = {k.ticket_id: k for k in s.scalars(select(SlaClock).where(
        SlaClock.ticket_id.in_([t.id for t in tickets])))} if tickets else {}
    return [ticket_dict(s, t, full=False, sla_state=ticket_state(t, clocks.get(t.id), now, at_risk_within=window))
            for t in tickets]


# Creating ----------------------------------------------------------------------------------------------------
def _request_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _new_ticket_values(data: dict[str, Any]) -> dict[str, Any]:
    subject = data.get("subject")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > 998:
        raise Invalid("subject: 1-998 characters", field="subject")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise Invalid("description: text", field="description")
    group = data.get("group") or None
    if group is not None and (not isinstance(group, str) or len(group) > 100):
        raise Invalid("group: 1-100 characters", field="group")
    watchers = data.get("watchers") or []
    if not isinstance(watchers, list) or len(watchers) > MAX_WATCHERS:
        raise Invalid(f"watchers: a list of at most {MAX_WATCHERS} addresses", field="watchers")
    return {"subject": subject.strip(), "reporter": check_email(data.get("reporter"), "reporter"),
            "description": description, "priority": _choice(data.get("priority") or "medium", "priority", PRIORITIES),
            "type": _choice(data.get("type") or "incident", "type", TYPES), "group": group,
            "tags": _tags(data.get("tags") or []), "watchers": [check_email(w, "watchers") for w in watchers],
            "organisation": data.get("organisation") or None}


def create_ticket(app: App, data: dict[str, Any], *, idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
    """A new ticket from plain values: subject, reporter (email), and optionally description, priority, type,
    group, organisation (a name), tags, watchers (emails), external_id. Returns (ticket, created). An
    `idempotency_key` or `external_id` seen before returns the ticket made then (created False): a retried
    create never makes a second ticket; the same key with a different request is refused."""
    v = _new_ticket_values(data)
    external_id = data.get("external_id") or None
    if external_id is not None and (not isinstance(external_id, str) or len(external_id) > 200):
        raise Invalid("external_id: 1-200 characters", field="external_id")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise Invalid("Idempotency-Key: 1-200 characters", field="Idempotency-Key")
    digest = _request_hash(data)
    keys = ([f"key:{idempotency_key}"] if idempotency_key else []) + ([f"ext:{external_id}"] if external_id else [])

    def attempt() -> tuple[dict[str, Any], bool]:
        with transaction(app.sessions) as s:
            for key in keys:
                row = s.scalar(select(ApiIdempotency).where(ApiIdempotency.key == key))
                if row is None:
                    continue
                if key.startswith("key:") and row.request_sha256 != digest:
                    raise Invalid("Idempotency-Key: already used for a different request", field="Idempotency-Key")
                t = s.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
                if t is None:
                    raise Conflict(f"{key.split(':', 1)[0]}: the ticket it made no longer exists")
                return _view(s, t, app.clock()), False
            d = Directory(s, app.clock)
            org = None
            if v["organisation"]:
                org = d.organisation(str(v["organisation"]))
                if org is None:
                    raise Invalid(f"organisation: no organisation {v['organisation']!r}", field="organisation")
            contact = d.contact(v["reporter"]) or d.register(v["reporter"])
            tickets = Tickets(s, clock=app.clock, listeners=app.listeners)
            try:
                t = tickets.create(subject=v["subject"], reporter=contact, description=v["description"],
                                   organisation_id=org.id if org else None, priority=v["priority"], type=v["type"],
                                   group=v["group"], tags=v["tags"])
            except InvalidChange as e:
                raise Invalid(str(e)) from None
            for w in v["watchers"]:  # named by the API or CLI caller (a token holder or an admin): mailed
                c = d.contact(w) or d.register(w)
                tickets.add_watcher(t, c, vouched=ADMIN)
            for key in keys:
                s.add(ApiIdempotency(key=key, ticket_id=t.id, request_sha256=digest, created_at=app.clock()))
            s.flush()  # a concurrent create with the same key loses here and runs again (finds the first)
            return _view(s, t, app.clock()), True

    return retry_on_conflict(attempt)


# Changing ----------------------------------------------------------------------------------------------------
def change_ticket(app: App, number: int, fields: dict[str, Any], *, by: str | None = None) -> dict[str, Any]:
    """Change status, priority, type, assignee (a staff email, or None), organisation (a name, or None), group
    (None clears), tags (replace), add_tags, remove_tags, remind_at (a datetime: pending with a reminder; None
    clears). The rules are gateway.workflow's: a reminder implies pending, leaving pending drops the reminder,
    resolving or closing a ticket an open ticket blocks is refused (409). Returns the changes, the SLA figures
    and the ticket."""
    unknown = sorted(set(fields) - set(CHANGEABLE))
    if unknown:
        raise Invalid(f"{unknown[0]}: cannot be changed here (one of {', '.join(CHANGEABLE)})", field=unknown[0])
    if not fields:
        raise Invalid("nothing to change")
    with transaction(app.sessions) as s, rules():
        w = workflow(s, app)
        t = w.ticket(number)
        who = w.contact(check_email(by, "by")) if by else None
        changes = w.set_fields(t, by=who, **fields)
        out = {k: [iso(v) if isinstance(v, datetime) else v for v in pair] for k, pair in changes.items()}
        sla = {"policy": t.sla_policy, "response_due_at": iso(t.response_due_at),
               "resolution_due_at": iso(t.resolution_due_at), "paused_at": iso(t.sla_paused_at),
               "remind_at": iso(t.remind_at)}
        return {"number": number, "changes": out, "sla": sla, "ticket": _view(s, t, app.clock())}


# Comments and attachments ------------------------------------------------------------------------------------
def _comment_view(c: Comment, atts: Iterable[Attachment]) -> dict[str, Any]:
    return {"id": c.id, "author": c.author_email or (c.author.email if c.author else None), "body": c.body,
            "html": c.html, "internal": c.internal, "by_staff": c.by_staff, "source": c.source,
            "created_at": iso(c.created_at), "attachments": [attachment_dict(a) for a in atts]}


def list_comments(app: App, number: int, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None,
                  internal: bool = True) -> Page:
    """Oldest first. internal=False leaves internal notes out."""
    after = pages.int_key(pages.decode(cursor), "id") if cursor else None
    with app.sessions() as s:
        t = _ticket(s, app, number)
        q = select(Comment).where(Comment.ticket_id == t.id).order_by(Comment.id)
        if not internal:
            q = q.where(Comment.internal.is_(False))
        if after is not None:
            q = q.where(Comment.id > after)
        rows = list(s.scalars(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        atts: dict[int, list[Attachment]] = {}
        if rows:
            for a in s.scalars(select(Attachment).where(Attachment.comment_id.in_([c.id for c in rows]))
                               .order_by(Attachment.id)):
                atts.setdefault(a.comment_id or 0, []).append(a)
        items = [_comment_view(c, atts.get(c.id, [])) for c in rows]
    return Page(items, pages.encode({"id": rows[-1].id}) if more and rows else None)


def clean_content_type(value: str | None) -> str:
    ct = (value or "").split(";", 1)[0].strip().lower()
    return ct if _CTYPE.match(ct) else "application/octet-stream"


def add_comment(app: App, number: int, *, body: str, internal: bool = False, author: str | None = None,
                attachments: Sequence[tuple[str, str, bytes]] = (), source: str = "api") -> dict[str, Any]:
    """A comment (public: mailed to the reporter and watchers like a staff reply; internal: to the staff
    concerned) with attachments (name, content type, bytes). author: a contact's email (default: the help
    desk itself, counted as staff)."""
    from gateway.mime import safe_filename

    if not isinstance(body, str) or (not body.strip() and not attachments):
        raise Invalid("body: the text of the comment (or at least one attachment)", field="body")
    if len(attachments) > MAX_ATTACHMENTS:
        raise Invalid(f"at most {MAX_ATTACHMENTS} attachments", field="attachments")
    with transaction(app.sessions) as s:
        t = _ticket(s, app, number)
        t = Tickets(s, clock=app.clock).followed(t)  # a merged ticket's comments go to the one it was merged into
        who = None
        if author:
            who = Directory(s, app.clock).contact(check_email(author, "author"))
            if who is None:
                raise Invalid(f"author: unknown contact {author}", field="author")
        tickets = Tickets(s, clock=app.clock, listeners=app.listeners)
        stored = [(safe_filename(name, content_type=clean_content_type(ctype), index=i + 1),
                   clean_content_type(ctype), data, app.blobs.put(data)) for i, (name, ctype, data)
                  in enumerate(attachments)]
        c = tickets.add_comment(t, author=who, author_email=who.email if who else None, body=body,
                                internal=internal, source=source, by_staff=None if who else True)
        rows = [Attachment(ticket_id=t.id, comment_id=c.id, filename=name, content_type=ctype, size=len(data),
                           sha256=sha, inline=False, created_at=app.clock()) for name, ctype, data, sha in stored]
        s.add_all(rows)
        s.flush()
        return _comment_view(c, rows)


def list_attachments(app: App, number: int, *, limit: int = pages.DEFAULT_LIMIT,
                     cursor: str | None = None) -> Page:
    after = pages.int_key(pages.decode(cursor), "id") if cursor else None
    with app.sessions() as s:
        t = _ticket(s, app, number)
        q = select(Attachment).where(Attachment.ticket_id == t.id).order_by(Attachment.id)
        if after is not None:
            q = q.where(Attachment.id > after)
        rows = list(s.scalars(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        items = [{**attachment_dict(a), "comment_id": a.comment_id} for a in rows]
    return Page(items, pages.encode({"id": rows[-1].id}) if more and rows else None)


def get_attachment(app: App, number: int, attachment_id: int) -> tuple[dict[str, Any], bytes]:
    """(metadata, bytes) of one attachment of this ticket."""
    with app.sessions() as s:
        t = _ticket(s, app, number)
        a = s.get(Attachment, attachment_id)
        if a is None or a.ticket_id != t.id:
            raise NotFound(f"ticket #{number} has no attachment {attachment_id}")
        meta = attachment_dict(a)
    try:
        data = app.blobs.get(meta["sha256"])
    except FileNotFoundError:
        raise NotFound(f"attachment {attachment_id}: its content is missing from the attachment store") from None
    return meta, data
