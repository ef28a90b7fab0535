"""`ticket-gateway tickets list|set|show`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli.base import UsageError, parse_instant

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config
    from gateway.models import Contact
    from gateway.tickets import Directory


def register(sub: Subparsers) -> None:
    p = sub.add_parser("tickets", help="list and show tickets")
    tsub = p.add_subparsers(dest="tickets_command", metavar="ACTION", required=True)
    ls = tsub.add_parser("list", help="list tickets, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--status", help="only this status (open, in_progress, pending, resolved, closed)")
    ls.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ls.set_defaults(func=list_tickets)
    st = tsub.add_parser("set", help="change a ticket: status, priority, type, assignee, group, pending reminder")
    st.add_argument("number", type=int)
    st.add_argument("--status", help="open, in_progress, pending, resolved, closed")
    st.add_argument("--priority", help="low, medium, high, critical")
    st.add_argument("--type", help="incident, problem, service_request, change_request")
    st.add_argument("--assignee", metavar="EMAIL", help="a staff contact (users add --staff); 'none' unassigns")
    st.add_argument("--group", help="group (queue); 'none' clears it")
    st.add_argument("--remind-at", metavar="ISO-8601",
                    help="pending reminder: on this date the ticket returns to open and the assignee (or the group) "
                    "gets a reminder mail; implies --status pending; no zone offset = UTC; 'none' clears it")
    st.add_argument("--by", metavar="EMAIL", help="who makes the change (a contact; default: nobody)")
    st.add_argument("--json", action="store_true", help="print the changes as JSON")
    st.set_defaults(func=set_ticket)
    sh = tsub.add_parser("show", help="one ticket with its comments and attachments")
    sh.add_argument("number", type=int)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=show_ticket)


BADGES = {  # state -> (text, ANSI colour)
    "on_track": ("on track", "32"), "at_risk": ("at risk", "33"), "breached": ("breached", "31"),
    "paused": ("paused", "36"), "met": ("met", "2"), "none": ("", ""),
}


def badge(state: str, colour: bool) -> str:
    text, code = BADGES.get(state, (state, ""))
    cell = f"{text:<9}"
    return f"\x1b[{code}m{cell}\x1b[0m" if colour and code and text else cell


def use_colour(stream: TextIO) -> bool:
    import os

    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR") \
        and os.environ.get("TERM") != "dumb"


def list_tickets(args: argparse.Namespace, config: Config) -> int:
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.cli.base import open_app
    from gateway.models import SlaClock, Ticket
    from gateway.sla.state import ticket_state
    from gateway.views import ticket_dict

    app = open_app(config, upgrade=True)
    now = app.clock()
    window = timedelta(minutes=config.get("sla", "at_risk_minutes"))
    with app.sessions() as s:
        # pending reminders that are due come first (index tickets(status, remind_at)), then newest first
        first: list[Ticket] = []
        if args.status in (None, "pending"):
            first = list(s.scalars(select(Ticket).where(Ticket.status == "pending", Ticket.remind_at <= now)
                                   .order_by(Ticket.remind_at, Ticket.number)))
        q = select(Ticket).order_by(Ticket.number.desc())
        if args.status:
            q = q.where(Ticket.status == args.status)
        if args.limit:
            q = q.limit(args.limit + len(first))
        seen = {t.id for t in first}
        tickets = first + [t for t in s.scalars(q) if t.id not in seen]
        if args.limit:
            tickets = tickets[:args.limit]
        clocks = {c.ticket_id: c for c in s.scalars(select(SlaClock).where(
            SlaClock.ticket_id.in_([t.id for t in tickets])))} if tickets else {}
        rows = []
        for t in tickets:
            state = ticket_state(t, clocks.get(t.id), now, at_risk_within=window)
            d = ticket_dict(s, t, full=False, sla_state=state)
            d["sla"]["reminder_due"] = t.id in seen
            rows.append(d)
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    colour = use_colour(sys.stdout)
    for r in rows:
        status = "reminder!" if r["sla"]["reminder_due"] else r["status"]
        print(f"#{r['number']:<6} {status:<11} {r['priority']:<8} {badge(r['sla']['state'], colour)} "
              f"{(r['sender'] or r['reporter']['email']):<30} {r['subject'][:60]}")
    if not rows:
        print("no tickets")
    return 0


def _field_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The ticket fields `tickets set` was asked to change (the assignee is looked up later)."""
    fields: dict[str, Any] = {}
    for name in ("status", "priority", "type"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.group is not None:
        fields["group"] = None if args.group.lower() in ("", "none") else args.group
    if args.remind_at is not None:
        if args.remind_at.lower() in ("", "none"):
            fields["remind_at"] = None
        else:
            fields["remind_at"] = parse_instant(args.remind_at, "--remind-at")
            fields.setdefault("status", "pending")
            if fields["status"] != "pending":
                raise UsageError("--remind-at goes with --status pending")
    if not fields and args.assignee is None:
        raise UsageError("nothing to change (see tickets set --help)")
    return fields


def _people(args: argparse.Namespace, directory: Directory) -> tuple[dict[str, Any], Contact | None]:
    """({"assignee": contact or None} when --assignee was given, the --by contact)."""
    fields: dict[str, Any] = {}
    if args.assignee is not None:
        if args.assignee.lower() in ("", "none"):
            fields["assignee"] = None
        else:
            c = directory.contact(args.assignee)
            if c is None or not c.is_staff:
                raise UsageError(f"{args.assignee}: not a staff contact (ticket-gateway users add EMAIL --staff)")
            fields["assignee"] = c
    by = None
    if args.by:
        by = directory.contact(args.by)
        if by is None:
            raise UsageError(f"--by {args.by}: unknown contact")
    return fields, by


def set_ticket(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.db import transaction
    from gateway.tickets import Directory, InvalidChange, Tickets
    from gateway.views import iso

    fields = _field_changes(args)
    app = open_app(config, upgrade=True)
    try:
        with transaction(app.sessions) as s:
            tickets = Tickets(s, clock=app.clock, listeners=app.listeners)
            t = tickets.get(args.number)
            if t is None:
                raise UsageError(f"no ticket #{args.number}")
            people, by = _people(args, Directory(s, app.clock))
            fields.update(people)
            if fields.get("status", t.status) != "pending" and "remind_at" not in fields and t.remind_at:
                fields["remind_at"] = None  # a reminder only makes sense while pending
            try:
                changes = tickets.change(t, by=by, **fields)
            except InvalidChange as e:
                raise UsageError(str(e)) from None
            out = {k: [iso(v) if hasattr(v, "isoformat") else v for v in pair] for k, pair in changes.items()}
            sla = {"policy": t.sla_policy, "response_due_at": iso(t.response_due_at),
                   "resolution_due_at": iso(t.resolution_due_at), "paused_at": iso(t.sla_paused_at),
                   "remind_at": iso(t.remind_at)}
    finally:
        app.close()
    if args.json:
        json.dump({"number": args.number, "changes": out, "sla": sla}, sys.stdout, indent=1)
        print()
        return 0
    if not out:
        print(f"#{args.number}: nothing changed")
    for k, (old, new) in out.items():
        print(f"#{args.number}: {k} {old if old is not None else '-'} -> {new if new is not None else '-'}")
    if sla["policy"]:
        print(f"#{args.number}: SLA {sla['policy']}: response due {sla['response_due_at'] or '-'}, resolution due "
              f"{sla['resolution_due_at'] or '-'}" + (" (paused)" if sla["paused_at"] else ""))
    return 0


def show_ticket(args: argparse.Namespace, config: Config) -> int:
    from datetime import timedelta

    from gateway.cli.base import open_app
    from gateway.sla.state import session_ticket_state
    from gateway.tickets import Tickets
    from gateway.views import ticket_dict

    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        t = Tickets(s, clock=app.clock).get(args.number)
        if t is None:
            raise UsageError(f"no ticket #{args.number}")
        state = session_ticket_state(s, t, app.clock(),
                                     at_risk_within=timedelta(minutes=config.get("sla", "at_risk_minutes")))
        d = ticket_dict(s, t, sla_state=state)
    if args.json:
        json.dump(d, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    print(f"#{d['number']} {d['subject']}")
    print(f"  status {d['status']}, priority {d['priority']}, type {d['type']}")
    if d["sender"] and d["sender"] != d["reporter"]["email"]:
        print(f"  from {d['sender']} (not a registered contact)")
    print(f"  reporter {d['reporter']['name']} <{d['reporter']['email']}>"
          + (f", organisation {d['organisation']}" if d["organisation"] else ""))
    if d["assignee"] or d["group"]:
        print(f"  assignee {d['assignee'] or '-'}, group {d['group'] or '-'}")
    if d["watchers"]:
        print(f"  watchers {', '.join(d['watchers'])}")
    for link in d["links"]:
        print(f"  linked: {link['kind']} #{link['number']}")
    print(f"  created {d['created_at']}, updated {d['updated_at']}")
    print()
    print(d["description"])
    for a in d["attachments"]:
        if not any(a in c["attachments"] for c in d["comments"]):
            print(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    for c in d["comments"]:
        print()
        kind = "internal note" if c["internal"] else "comment"
        print(f"--- {kind} by {c['author'] or 'system'} at {c['created_at']}")
        print(c["body"])
        for a in c["attachments"]:
            print(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    return 0
