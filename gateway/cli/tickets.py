"""`ticket-gateway tickets list|set|show`."""

from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import NotFound, UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def use_colour(stream) -> bool:  # type: ignore[no-untyped-def]
    import os

    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR") \
        and os.environ.get("TERM") != "dumb"


def list_tickets(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.cli import open_app
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
            d = ticket_dict(s, t, full=False, now=now, sla_state=state)
            d["sla"]["reminder_due"] = t.id in seen
            rows.append(d)
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    if not rows:
        print("no tickets")
        return 0
    from gateway.cli.table import Styled, print_table

    def sla_cell(state: str) -> Styled:
        text, code = BADGES.get(state, (state, ""))
        return Styled(text, code)

    print_table(("ticket", "status", "priority", "sla", "from", "subject"),
                ((f"#{r['number']}", "reminder!" if r["sla"]["reminder_due"] else r["status"], r["priority"],
                  sla_cell(r["sla"]["state"]), r["sender"] or r["reporter"]["email"], r["subject"]) for r in rows),
                caps={"from": 60, "subject": 70}, colour=use_colour(sys.stdout))
    return 0


def set_ticket(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import open_app
    from gateway.db import transaction
    from gateway.tickets import Directory, InvalidChange, Tickets

    fields: dict = {}  # type: ignore[type-arg]
    for name in ("status", "priority", "type"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.group is not None:
        fields["group"] = None if args.group.lower() in ("", "none") else args.group
    if args.remind_at is not None:
        if args.remind_at.lower() in ("", "none"):
            fields["remind_at"] = None
        else:
            from gateway.cli.sla import parse_instant

            fields["remind_at"] = parse_instant(args.remind_at, "--remind-at")
            fields.setdefault("status", "pending")
            if fields["status"] != "pending":
                raise UsageError("--remind-at goes with --status pending")
    if not fields and args.assignee is None:
        raise UsageError("nothing to change (see tickets set --help)")
    app = open_app(config, upgrade=True)
    try:
        with transaction(app.sessions) as s:
            tickets = Tickets(s, clock=app.clock, listeners=app.listeners)
            directory = Directory(s, app.clock)
            t = tickets.get(args.number)
            if t is None:
                raise NotFound(f"no ticket #{args.number}")
            if args.assignee is not None:
                if args.assignee.lower() in ("", "none"):
                    fields["assignee"] = None
                else:
                    c = directory.contact(args.assignee)
                    if c is None or not c.is_staff:
                        raise UsageError(f"{args.assignee}: not a staff contact (ticket-gateway users add EMAIL "
                                         "--staff)")
                    fields["assignee"] = c
            by = None
            if args.by:
                by = directory.contact(args.by)
                if by is None:
                    raise UsageError(f"--by {args.by}: unknown contact")
            if fields.get("status", t.status) != "pending" and "remind_at" not in fields and t.remind_at:
                fields["remind_at"] = None  # a reminder only makes sense while pending
            try:
                changes = tickets.change(t, by=by, **fields)
            except InvalidChange as e:
                raise UsageError(str(e)) from None
            from gateway.views import iso

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


def show_ticket(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import open_app
    from gateway.tickets import Tickets
    from gateway.views import ticket_dict

    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        t = Tickets(s, clock=app.clock).get(args.number)
        if t is None:
            raise NotFound(f"no ticket #{args.number}")
        d = ticket_dict(s, t)
    if args.json:
        json.dump(d, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    print(f"#{d['number']} {d['subject']}")
    print(f"  status {d['status']}, priority {d['priority']}, type {d['type']}")
    rep = d["reporter"]
    who = f"{rep['name']} <{rep['email']}>" if rep["name"] else rep["email"]
    role = " (correspondent: no account)" if rep.get("role") == "correspondent" else ""
    print(f"  reporter {who}{role}" + (f", organisation {d['organisation']}" if d["organisation"] else ""))
    if d["sender"] and d["sender"] != rep["email"]:
        print(f"  from {d['sender']} (not a registered contact)")
    if d["assignee"] or d["group"]:
        print(f"  assignee {d['assignee'] or '-'}, group {d['group'] or '-'}")
    if d["watchers"]:
        print(f"  watchers {', '.join(d['watchers'])}")
    for link in d["links"]:
        print(f"  linked: {link['kind']} #{link['number']}")
    print(f"  created {d['created_at']}, updated {d['updated_at']}"
          + (f", closed {d['closed_at']}" if d["closed_at"] else ""))
    for line in sla_lines(d["sla"]):
        print(f"  {line}")
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


def sla_lines(sla: dict) -> list[str]:  # type: ignore[type-arg]
    """The SLA state of `tickets show`: the policy, its deadlines and where the ticket stands."""
    out = []
    if sla.get("policy"):
        state = BADGES.get(sla["state"], (sla["state"], ""))[0] or "-"
        response = (f"responded {sla['first_response_at']}" if sla["first_response_at"]
                    else f"response due {sla['response_due_at'] or '-'}")
        out.append(f"SLA {sla['policy']}: {state}; {response}; resolution due {sla['resolution_due_at'] or '-'}"
                   + (f"; paused since {sla['paused_at']}" if sla["paused_at"] else ""))
    else:
        out.append("SLA: none")
    if sla.get("remind_at"):
        out.append(f"pending reminder at {sla['remind_at']}")
    return out
