"""`ticket-gateway tickets list|show`."""

from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tickets", help="list and show tickets")
    tsub = p.add_subparsers(dest="tickets_command", metavar="ACTION", required=True)
    ls = tsub.add_parser("list", help="list tickets, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--status", help="only this status (open, in_progress, pending, resolved, closed)")
    ls.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ls.set_defaults(func=list_tickets)
    sh = tsub.add_parser("show", help="one ticket with its comments and attachments")
    sh.add_argument("number", type=int)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=show_ticket)


def list_tickets(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.cli import open_app
    from gateway.models import Ticket
    from gateway.views import ticket_dict

    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        q = select(Ticket).order_by(Ticket.number.desc())
        if args.status:
            q = q.where(Ticket.status == args.status)
        if args.limit:
            q = q.limit(args.limit)
        tickets = s.scalars(q).all()
        rows = [ticket_dict(s, t, full=False) for t in tickets]
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    for r in rows:
        print(f"#{r['number']:<6} {r['status']:<11} {r['priority']:<8} {r['reporter']['email']:<30} "
              f"{r['subject'][:60]}")
    if not rows:
        print("no tickets")
    return 0


def show_ticket(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import open_app
    from gateway.tickets import Tickets
    from gateway.views import ticket_dict

    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        t = Tickets(s, clock=app.clock).get(args.number)
        if t is None:
            raise UsageError(f"no ticket #{args.number}")
        d = ticket_dict(s, t)
    if args.json:
        json.dump(d, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    print(f"#{d['number']} {d['subject']}")
    print(f"  status {d['status']}, priority {d['priority']}, type {d['type']}")
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
