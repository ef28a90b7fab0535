"""Staff work on tickets: the rules of the ticket model, implemented once, on the caller's session.

Mail commands (a handler, inside the pipeline's transaction), the CLI and the HTTP API (gateway.ops, which
wraps each call in a transaction and turns the errors below into NotFound / Invalid / Conflict) all call
`Workflow`. Every change goes through gateway.tickets.Tickets, so its listeners (notifications, the SLA
clocks, the external desk's push queue) see it in the same transaction.

Rules:
- set fields: status, priority, type, assignee (a staff member), organisation (by name), group, tags (replace,
  add, remove), pending reminder (`remind_at` implies pending; leaving pending drops the reminder);
  resolving or closing a ticket that an open ticket blocks is refused (`gateway.refuse_close_while_blocked`).
- links: relates, duplicates / duplicated-by, caused-by / causes, blocks / blocked-by; stored one way
  ("A blocks B"), read from either end (gateway.tickets.LINK_INVERSE).
- time entries: who, when, minutes, note; a total per ticket.
- merge: comments, attachments, time entries, watchers (and the merged ticket's reporter, as a watcher) and
  Message-IDs move to the target; the merged ticket closes and points to it (gateway.tickets.Tickets.followed:
  mail naming it lands on the target).
- watchers: staff add or remove anyone (an unknown address becomes a correspondent).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from gateway.models import (
    PRIORITIES,
    STATUSES,
    TYPES,
    Attachment,
    Comment,
    Contact,
    Ticket,
    TicketLink,
    TicketMessageId,
    TimeEntry,
    Watcher,
    table_of,
)
from gateway.tickets import Directory, InvalidChange, Tickets, normalise_email

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config import Config
    from gateway.events import Listeners

DONE = ("resolved", "closed")
MAX_TAGS = 50
MAX_TAG_LENGTH = 100
MAX_GROUP_LENGTH = 100
MAX_LINKS = 200  # per ticket, each way
MAX_WATCHERS = 1000  # per ticket
MAX_NOTE = 2000
MAX_MINUTES = 100 * 60  # one time entry: at most 100 hours
STAFF_ADDED = "added by staff"  # why the gateway may mail a watcher staff added (gateway.guard.relay)

# How links may be written (any letter case; '_' or ' ' for '-') -> (stored kind, stored the other way round)
LINK_INPUT: dict[str, tuple[str, bool]] = {
    "relates": ("relates", False), "related": ("relates", False), "relates-to": ("relates", False),
    "duplicates": ("duplicates", False), "duplicate-of": ("duplicates", False),
    "duplicated-by": ("duplicates", True),
    "caused-by": ("caused-by", False), "causes": ("caused-by", True),
    "blocks": ("blocks", False), "blocked-by": ("blocks", True),
}
LINK_KIND_NAMES = ("relates", "duplicates", "duplicated-by", "caused-by", "causes", "blocks", "blocked-by")
SETTABLE = ("status", "priority", "type", "assignee", "organisation", "group", "tags", "add_tags", "remove_tags",
            "remind_at")
_DURATION = re.compile(r"^(?:(\d{1,3}(?:\.\d{1,2})?)\s*h)?\s*(?:(\d{1,4})\s*m(?:in)?)?$")


class NoSuch(LookupError):
    """A ticket, person or organisation named that does not exist."""


class Refused(Exception):
    """A rule refuses the change in the ticket's current state (a close blocked by an open ticket, a merge of a
    merged ticket...)."""


def spelled(value: str) -> str:
    """The canonical spelling of a choice: lower case, '-' for '_' and spaces."""
    return re.sub(r"[\s_]+", "-", value.strip().lower())


def choice(value: Any, what: str, known: tuple[str, ...]) -> str:
    """One of `known` (the CLI's spellings, with '_'), written in any case with '-', '_' or a space."""
    if isinstance(value, str):
        want = spelled(value)
        for k in known:
            if spelled(k) == want:
                return k
    raise InvalidChange(f"{what}: one of {', '.join(known)} (got {value!r})")


def link_kind(value: str) -> tuple[str, bool]:
    """(stored kind, reversed) for a link kind as people write it; InvalidChange for an unknown one."""
    found = LINK_INPUT.get(spelled(value)) if isinstance(value, str) else None
    if found is None:
        raise InvalidChange(f"kind: one of {', '.join(LINK_KIND_NAMES)} (got {value!r})")
    return found


def parse_duration(text: str) -> int:
    """Minutes of '1h30m', '1h 30m', '2h', '1.5h', '45m', '45min' or '45' (minutes); InvalidChange otherwise."""
    t = (text or "").strip().lower()
    if t.isdigit() and len(t) <= 5:
        minutes = int(t)
    else:
        m = _DURATION.match(t)
        if m is None or not (m.group(1) or m.group(2)):
            raise InvalidChange(f"time: a duration like 1h30m, 2h or 45m (got {text!r})")
        minutes = round(float(m.group(1) or 0) * 60) + int(m.group(2) or 0)
    if not 1 <= minutes <= MAX_MINUTES:
        raise InvalidChange(f"time: between 1 minute and {MAX_MINUTES // 60} hours (got {text!r})")
    return minutes


def format_minutes(minutes: int) -> str:
    h, m = divmod(int(minutes), 60)
    return f"{h}h{m:02d}m" if h else f"{m}m"


def clean_tags(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for t in values:
        if not isinstance(t, str) or not t.strip() or len(t.strip()) > MAX_TAG_LENGTH:
            raise InvalidChange(f"tags: each 1-{MAX_TAG_LENGTH} characters (got {t!r})")
        if t.strip() not in out:
            out.append(t.strip())
        if len(out) > MAX_TAGS:
            raise InvalidChange(f"tags: at most {MAX_TAGS}")
    return out


@dataclass
class Merged:
    source: int
    target: int
    comments: int
    attachments: int
    time_entries: int
    watchers: int
    message_ids: int


class Workflow:
    def __init__(self, session: Session, *, clock: Clock, listeners: Listeners | None = None,
                 refuse_close_while_blocked: bool = True, tickets: Tickets | None = None,
                 directory: Directory | None = None) -> None:
        """tickets, directory: the caller's (the pipeline's store: it marks an import's events quiet and keeps
        what its transaction remembers up to date); else new ones."""
        self.s = session
        self.clock = clock
        self.tickets = tickets if tickets is not None else Tickets(session, clock=clock, listeners=listeners)
        self.directory = directory if directory is not None else Directory(session, clock)
        self.refuse_close_while_blocked = refuse_close_while_blocked

    @classmethod
    def of(cls, session: Session, *, clock: Clock, listeners: Listeners | None, config: Config,
           tickets: Tickets | None = None, directory: Directory | None = None) -> Workflow:
        return cls(session, clock=clock, listeners=listeners, tickets=tickets, directory=directory,
                   refuse_close_while_blocked=bool(config.gateway["refuse_close_while_blocked"]))

    # Lookups -------------------------------------------------------------------------------------------------
    def ticket(self, number: int) -> Ticket:
        t = self.tickets.get(int(number))
        if t is None:
            raise NoSuch(f"no ticket #{number}")
        return t

    def contact(self, email: str) -> Contact:
        c = self.directory.contact(email)
        if c is None:
            raise NoSuch(f"no contact {email}")
        return c

    def staff(self, email: str) -> Contact:
        c = self.contact(email)
        if not c.is_staff:
            raise InvalidChange(f"assignee: {email} is not a staff member (users set {email} --staff)")
        return c

    # Fields --------------------------------------------------------------------------------------------------
    def blockers(self, t: Ticket) -> list[Ticket]:
        """The open tickets that block this one (a 'blocks' link to it), by number."""
        return list(self.s.scalars(
            select(Ticket).join(TicketLink, TicketLink.ticket_id == Ticket.id)
            .where(TicketLink.other_ticket_id == t.id, TicketLink.kind == "blocks", Ticket.status.notin_(DONE))
            .order_by(Ticket.number).limit(MAX_LINKS)))

    def _values(self, t: Ticket, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields as gateway.tickets.Tickets.change takes them, checked."""
        unknown = sorted(set(fields) - set(SETTABLE))
        if unknown:
            raise InvalidChange(f"{unknown[0]}: cannot be set (one of {', '.join(SETTABLE)})")
        out: dict[str, Any] = {}
        for name, known in (("status", STATUSES), ("priority", PRIORITIES), ("type", TYPES)):
            if fields.get(name) is not None:
                out[name] = choice(fields[name], name, known)
        if "assignee" in fields:
            a = fields["assignee"]
            out["assignee"] = None if a is None else a if isinstance(a, Contact) else self.staff(a)
            if out["assignee"] is not None and not out["assignee"].is_staff:
                raise InvalidChange(f"assignee: {out['assignee'].email} is not a staff member")
        if "organisation" in fields:
            name = fields["organisation"]
            out["organisation"] = None if name is None else self.directory.organisation(str(name))
            if name is not None and out["organisation"] is None:
                raise NoSuch(f"no organisation {name!r} (orgs add {name})")
        if "group" in fields:
            g = fields["group"]
            if g is not None and (not isinstance(g, str) or not 1 <= len(g.strip()) <= MAX_GROUP_LENGTH):
                raise InvalidChange(f"group: 1-{MAX_GROUP_LENGTH} characters")
            out["group"] = g.strip() if g is not None else None
        tags = self._tags(t, fields)
        if tags is not None:
            out["tags"] = tags
        if "remind_at" in fields:
            out["remind_at"] = self._reminder(fields["remind_at"], out)
        if out.get("status", t.status) != "pending" and "remind_at" not in out and t.remind_at is not None:
            out["remind_at"] = None  # a reminder only makes sense while pending
        return out

    @staticmethod
    def _tags(t: Ticket, fields: dict[str, Any]) -> list[str] | None:
        if not any(k in fields for k in ("tags", "add_tags", "remove_tags")):
            return None
        tags = clean_tags(fields["tags"]) if "tags" in fields else list(t.tags or [])
        for tag in clean_tags(fields.get("add_tags") or []):
            if tag not in tags:
                tags.append(tag)
        gone = set(clean_tags(fields.get("remove_tags") or []))
        return clean_tags([tag for tag in tags if tag not in gone])

    @staticmethod
    def _reminder(value: Any, out: dict[str, Any]) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidChange("remind_at: a time with a zone")
        out.setdefault("status", "pending")
        if out["status"] != "pending":
            raise InvalidChange("a pending reminder goes with status pending")
        return value

    def set_fields(self, t: Ticket, *, by: Contact | None = None, **fields: Any) -> dict[str, tuple[Any, Any]]:
        """Change the ticket (see SETTABLE); returns field -> (old, new) of what changed."""
        values = self._values(t, fields)
        if not values:
            return {}
        if values.get("status") in DONE and t.status not in DONE and self.refuse_close_while_blocked:
            open_blockers = self.blockers(t)
            if open_blockers:
                names = ", ".join(f"#{b.number} ({b.status})" for b in open_blockers[:10])
                raise Refused(f"#{t.number} cannot be {values['status']}: it is blocked by {names}")
        return self.tickets.change(t, by=by, **values)

    # Links ---------------------------------------------------------------------------------------------------
    def link(self, t: Ticket, other: Ticket, kind: str) -> tuple[str, bool]:
        """Link t to other ('blocks': t blocks other; 'blocked-by': other blocks t; ...). Returns (the kind as
        read from t, whether the link is new)."""
        stored, flip = link_kind(kind)
        if t.id == other.id:
            raise InvalidChange(f"#{t.number} cannot be linked to itself")
        a, b = (other, t) if flip else (t, other)
        pairs = [(a.id, b.id)] + ([(b.id, a.id)] if stored == "relates" else [])
        for x, y in pairs:
            if self._linked(x, y, stored):
                return spelled(kind), False
        if stored == "blocks" and self._linked(b.id, a.id, "blocks"):
            raise Refused(f"#{b.number} already blocks #{a.number}: two tickets cannot block each other")
        for end in (t, other):
            if self._link_count(end) >= MAX_LINKS:
                raise Refused(f"#{end.number} has {MAX_LINKS} links already")
        self.tickets.link(a, b, kind=stored)
        return spelled(kind), True

    def _linked(self, ticket_id: int, other_ticket_id: int, kind: str) -> bool:
        return self.s.scalar(select(TicketLink.id).where(TicketLink.ticket_id == ticket_id,
                                                         TicketLink.other_ticket_id == other_ticket_id,
                                                         TicketLink.kind == kind)) is not None

    def _link_count(self, t: Ticket) -> int:
        return int(self.s.scalar(select(func.count()).select_from(TicketLink).where(
            (TicketLink.ticket_id == t.id) | (TicketLink.other_ticket_id == t.id))) or 0)

    def unlink(self, t: Ticket, other: Ticket, kind: str | None = None) -> int:
        """Remove the links between the two tickets (of this kind, either way round); returns how many."""
        cond = ((TicketLink.ticket_id == t.id) & (TicketLink.other_ticket_id == other.id)) | \
               ((TicketLink.ticket_id == other.id) & (TicketLink.other_ticket_id == t.id))
        if kind is not None:
            stored, flip = link_kind(kind)
            a, b = (other, t) if flip else (t, other)
            cond = (TicketLink.ticket_id == a.id) & (TicketLink.other_ticket_id == b.id)
            if stored == "relates":
                cond = cond | ((TicketLink.ticket_id == b.id) & (TicketLink.other_ticket_id == a.id))
            cond = cond & (TicketLink.kind.in_(("relates", "related")) if stored == "relates"
                           else TicketLink.kind == stored)
        res = self.s.execute(delete(TicketLink).where(cond).execution_options(synchronize_session=False))
        return int(getattr(res, "rowcount", 0) or 0)

    def links(self, t: Ticket) -> list[dict[str, Any]]:
        """[{kind, number, subject, status}] as read from t."""
        pairs = self.tickets.links(t, MAX_LINKS)
        others = {o.number: o for o in self.s.scalars(select(Ticket).where(
            Ticket.number.in_([n for _, n in pairs])))} if pairs else {}
        return [{"kind": k, "number": n, "subject": others[n].subject if n in others else None,
                 "status": others[n].status if n in others else None} for k, n in pairs]

    # Time ----------------------------------------------------------------------------------------------------
    def log_time(self, t: Ticket, minutes: int | str, *, by: Contact | None = None, note: str = "",
                 at: datetime | None = None) -> TimeEntry:
        m = parse_duration(minutes) if isinstance(minutes, str) else int(minutes)
        if not 1 <= m <= MAX_MINUTES:
            raise InvalidChange(f"time: between 1 and {MAX_MINUTES} minutes")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise InvalidChange(f"note: at most {MAX_NOTE} characters")
        now = self.clock()
        e = TimeEntry(ticket_id=t.id, contact_id=by.id if by else None, author_email=by.email if by else None,
                      minutes=m, note=note.strip(), spent_at=at or now, created_at=now)
        self._write(e)
        return e

    def _write(self, row: Any | None) -> None:
        """A new row (or None: a change of the objects) written now."""
        if row is not None:
            self.s.add(row)
        self.s.flush()

    def time_total(self, t: Ticket) -> int:
        return int(self.s.scalar(select(func.coalesce(func.sum(TimeEntry.minutes), 0))
                                 .where(TimeEntry.ticket_id == t.id)) or 0)

    def time_entries(self, t: Ticket, *, after: int | None = None, limit: int = 200) -> list[TimeEntry]:
        q = select(TimeEntry).where(TimeEntry.ticket_id == t.id).order_by(TimeEntry.id)
        if after is not None:
            q = q.where(TimeEntry.id > after)
        return list(self.s.scalars(q.limit(limit)))

    # Watchers ------------------------------------------------------------------------------------------------
    def watch(self, t: Ticket, email: str) -> bool:
        """Add a watcher (staff vouch for it: it is mailed); an unknown address becomes a correspondent."""
        email = normalise_email(email)
        c = self.directory.contact(email) or self.directory.register(email, correspondent=True)
        if len(t.watchers) >= MAX_WATCHERS and all(w.contact_id != c.id for w in t.watchers):
            raise Refused(f"#{t.number} has {MAX_WATCHERS} watchers already")
        return self.tickets.add_watcher(t, c, vouched=STAFF_ADDED)

    def unwatch(self, t: Ticket, email: str) -> bool:
        email = normalise_email(email)
        for w in list(t.watchers):
            if w.contact.email == email:
                t.watchers.remove(w)
                self._write(None)
                return True
        return False

    # Merge ---------------------------------------------------------------------------------------------------
    def merge(self, source: Ticket, target: Ticket, *, by: Contact | None = None) -> Merged:
        if source.id == target.id:
            raise InvalidChange(f"#{source.number} cannot be merged into itself")
        for t in (source, target):
            if t.merged_into_id is not None:
                into = self.tickets.followed(t)
                raise Refused(f"#{t.number} was merged into #{into.number} already")
        moved = {}
        for model in (Comment, Attachment, TimeEntry):
            table = table_of(model)
            res = self.s.execute(update(table).where(table.c.ticket_id == source.id).values(ticket_id=target.id))
            moved[model] = int(getattr(res, "rowcount", 0) or 0)
        known = select(TicketMessageId.message_id).where(TicketMessageId.ticket_id == target.id).scalar_subquery()
        self.s.execute(delete(TicketMessageId).where(TicketMessageId.ticket_id == source.id,
                                                     TicketMessageId.message_id.in_(known))
                       .execution_options(synchronize_session=False))
        res = self.s.execute(update(TicketMessageId).where(TicketMessageId.ticket_id == source.id)
                             .values(ticket_id=target.id).execution_options(synchronize_session=False))
        ids = int(getattr(res, "rowcount", 0) or 0)
        self.tickets.message_ids_written(None)  # what was known of these Message-IDs points at the source
        watchers = 0
        people = [(w.contact, w.vouched) for w in source.watchers]
        people.append((source.reporter, source.reporter.vouched or f"reporter of #{source.number}"))
        for contact, vouched in people:
            watchers += self.tickets.add_watcher(target, contact, vouched=vouched, flush=False)
        self.s.execute(delete(Watcher).where(Watcher.ticket_id == source.id)
                       .execution_options(synchronize_session=False))
        self.s.flush()
        self.s.expire(source, ["watchers", "comments", "attachments"])
        self.s.expire(target, ["comments", "attachments"])
        self.tickets.change(source, by=by, status="closed", merged_into=target,
                            **({"remind_at": None} if source.remind_at is not None else {}))
        target.updated_at = self.clock()
        self.s.flush()
        return Merged(source.number, target.number, moved[Comment], moved[Attachment], moved[TimeEntry], watchers,
                      ids)
