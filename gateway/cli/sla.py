"""`ticket-gateway sla policies add|list|remove`, `sla tick [--now ISO]`, `sla report`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.cli.base import UsageError, parse_instant

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.app import App
    from gateway.cli.base import Subparsers
    from gateway.config import Config
    from gateway.sla.sweep import SweepResult


def register(sub: Subparsers) -> None:
    p = sub.add_parser("sla", help="SLA policies, the escalation sweep and the at-risk report")
    ssub = p.add_subparsers(dest="sla_command", metavar="ACTION", required=True)

    pol = ssub.add_parser("policies", help="SLA policies (first active match in this order applies)")
    psub = pol.add_subparsers(dest="policies_command", metavar="ACTION", required=True)
    add = psub.add_parser("add", help="add a policy (or change one with --replace)")
    add.add_argument("name")
    add.add_argument("--response", type=int, required=True, metavar="MIN", help="response target, minutes")
    add.add_argument("--resolution", type=int, required=True, metavar="MIN", help="resolution target, minutes")
    add.add_argument("--priorities", metavar="LIST", help="e.g. critical,high (default: all)")
    add.add_argument("--types", metavar="LIST", help="e.g. incident,problem (default: all)")
    add.add_argument("--organisations", metavar="LIST", help="organisation names (default: all)")
    add.add_argument("--groups", metavar="LIST", help="group names (default: all)")
    add.add_argument("--warn-at", type=int, default=80, metavar="PERCENT",
                     help="warn when this share of the time is used (default 80; 0: no percentage warning)")
    add.add_argument("--warn-before", type=int, default=0, metavar="MIN",
                     help="warn this many minutes before a deadline (the earlier warning applies)")
    add.add_argument("--escalate-to", action="append", default=[], metavar="EMAIL",
                     help="also mail warnings and breaches here (e.g. the team lead); repeatable")
    add.add_argument("--no-assignee", action="store_true", help="do not mail the assignee")
    add.add_argument("--no-group", action="store_true", help="do not mail the group address")
    add.add_argument("--calendar", metavar="SPEC",
                     help="business hours, e.g. 'Europe/Berlin mon-fri 09:00-17:00' (default: around the clock)")
    add.add_argument("--holidays", metavar="DATES", help="with --calendar: 2026-12-25,2026-12-26")
    add.add_argument("--position", type=int, metavar="N", help="insert at this place (1: first); default: last")
    add.add_argument("--inactive", action="store_true", help="add it switched off")
    add.add_argument("--replace", action="store_true", help="change an existing policy of this name")
    add.set_defaults(func=policies_add)
    ls = psub.add_parser("list", help="the policies in the order they are tried")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=policies_list)
    sh = psub.add_parser("show", help="one policy (JSON)")
    sh.add_argument("name")
    sh.set_defaults(func=policies_show)
    rm = psub.add_parser("remove", help="remove a policy (tickets keep their deadlines)")
    rm.add_argument("name")
    rm.set_defaults(func=policies_remove)

    tick = ssub.add_parser("tick", help="sweep once: pending reminders and escalations that are due")
    tick.add_argument("--now", metavar="ISO-8601", help="evaluate as of this instant (catch-up, tests); a time "
                      "in the future only shows what would happen unless --apply is given")
    tick.add_argument("--dry-run", action="store_true", help="show what would happen; change and queue nothing")
    tick.add_argument("--apply", action="store_true", help="with a --now in the future: really change the "
                      "tickets and queue the mails")
    tick.add_argument("--json", action="store_true")
    tick.set_defaults(func=tick_cmd)

    rep = ssub.add_parser("report", help="tickets at risk and breached, by group and assignee")
    rep.add_argument("--now", metavar="ISO-8601", help="as of this instant")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(func=report_cmd)


def policies_add(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.sla import put_policy

    holidays = [h for h in (args.holidays or "").split(",") if h.strip()]
    if holidays and not args.calendar:
        raise UsageError("--holidays needs --calendar")
    emails = [e for item in args.escalate_to for e in item.split(",") if e.strip()]
    body = {"response_minutes": args.response, "resolution_minutes": args.resolution,
            "priorities": args.priorities, "types": args.types, "organisations": args.organisations,
            "groups": args.groups, "warn_percent": args.warn_at, "warn_minutes_before": args.warn_before,
            "escalate_to": emails, "calendar": args.calendar, "holidays": holidays,
            "notify_assignee": not args.no_assignee, "notify_group": not args.no_group, "active": not args.inactive,
            "position": args.position}
    app = open_app(config, upgrade=True)
    try:
        row, _, _ = put_policy(app, args.name, body, replace=args.replace, source="cli")
    finally:
        app.close()
    print(f"policy {row['name']!r}: response {row['response_minutes']} min, resolution "
          f"{row['resolution_minutes']} min, position {row['position']}")
    return 0


def policies_list(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.pages import MAX_LIMIT
    from gateway.ops.sla import list_policies

    app = open_app(config, upgrade=True)
    rows: list[dict[str, Any]] = []
    cursor = None
    try:
        while True:
            page = list_policies(app, limit=MAX_LIMIT, cursor=cursor)
            rows += page.items
            cursor = page.next_cursor
            if not cursor:
                break
    finally:
        app.close()
    if args.json:
        json.dump([{k: v for k, v in r.items() if k != "calendar_text"} for r in rows], sys.stdout, indent=1)
        print()
        return 0
    if not rows:
        print("no SLA policies (add one: ticket-gateway sla policies add NAME --response MIN --resolution MIN)")
    for r in rows:
        filters = [f"{k}={','.join(r[k])}" for k in ("priorities", "types", "organisations", "groups") if r[k]]
        warn = [f"at {r['warn_percent']}%"] if r["warn_percent"] else []
        warn += [f"{r['warn_minutes_before']} min before"] if r["warn_minutes_before"] else []
        who = (["assignee"] if r["notify_assignee"] else []) + (["group"] if r["notify_group"] else []) \
            + r["escalate_to"]
        print(f"{r['position']:>3}. {r['name']}{'' if r['active'] else ' (inactive)'}: response "
              f"{r['response_minutes']} min, resolution {r['resolution_minutes']} min, {r['calendar_text']}")
        print(f"     applies to: {' '.join(filters) or 'all tickets'}; warn {' or '.join(warn) or 'never'}; "
              f"escalate to {', '.join(who) or 'nobody'}")
    return 0


def policies_show(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.sla import get_policy

    app = open_app(config, upgrade=True)
    try:
        print(json.dumps(get_policy(app, args.name), indent=1))
    finally:
        app.close()
    return 0


def policies_remove(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.sla import remove_policy

    app = open_app(config, upgrade=True)
    try:
        remove_policy(app, args.name)
    finally:
        app.close()
    print(f"policy {args.name!r} removed (tickets keep the deadlines it gave them)")
    return 0


# A --now later than this past the real time is "in the future": only a dry run, unless --apply
FUTURE_SLACK_SECONDS = 60


def tick_cmd(args: argparse.Namespace, config: Config) -> int:
    from datetime import timedelta

    from gateway.cli.base import open_app
    from gateway.sla.sweep import sweep

    if args.dry_run and args.apply:
        raise UsageError("--dry-run and --apply contradict each other")
    now = parse_instant(args.now) if args.now else None
    future = now is not None and now > datetime.now(UTC) + timedelta(seconds=FUTURE_SLACK_SECONDS)
    dry = args.dry_run or (future and not args.apply)
    app = open_app(config, upgrade=True)
    try:
        if dry:
            result = _dry_sweep(app, now)
        else:
            result = sweep(app, now)
    finally:
        app.close()
    note = ("" if not dry else "dry run: nothing was changed or queued"
            + (" (--now is in the future; --apply does it)" if future and not args.dry_run else ""))
    if args.json:
        json.dump({"now": result.now.isoformat(), "dry_run": dry, "seconds": result.seconds, "skipped": result.skipped,
                   "escalations": [{"ticket": n, "kind": k, "recipients": r} for n, k, r in result.escalations],
                   "suppressed": [{"ticket": n, "kind": k} for n, k in result.suppressed],
                   "reminders": [{"ticket": n, "recipients": r} for n, r in result.reminders]},
                  sys.stdout, indent=1)
        print()
        return 0
    for n, k, r in result.escalations:
        print(f"#{n}: {k.replace('_', ' ')} -> {', '.join(r)}")
    for n, r in result.reminders:
        print(f"#{n}: pending reminder, back to open -> {', '.join(r) or 'nobody'}")
    for n, k in result.suppressed:
        print(f"#{n}: {k.replace('_', ' ')} recorded, not mailed")
    print(result.summary())
    if note:
        print(note)
    return 0


def _dry_sweep(app: App, now: datetime | None) -> SweepResult:
    """The real sweep, every page of it inside one outer transaction that is rolled back at the end: the
    same decisions, nothing kept (no ticket changed, no escalation claimed, no mail queued)."""
    from gateway.sla.sweep import sweep

    with app.engine.connect() as conn:
        outer = conn.begin()
        try:
            app.sessions.configure(bind=conn, join_transaction_mode="create_savepoint")
            return sweep(app, now)
        finally:
            outer.rollback()


def report_cmd(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.sla.report import report

    app = open_app(config, upgrade=True)
    try:
        now = parse_instant(args.now) if args.now else app.clock()
        data = report(app, now)
    finally:
        app.close()
    if args.json:
        json.dump(data, sys.stdout, indent=1)
        print()
        return 0
    print(f"SLA report as of {data['now']}: {data['totals']['breached']} breached, "
          f"{data['totals']['at_risk']} at risk, {data['totals']['paused']} paused")
    for title, key in (("by group", "by_group"), ("by assignee", "by_assignee")):
        print(f"\n{title}:")
        if not data[key]:
            print("  nothing at risk or breached")
        for name, entry in data[key].items():
            print(f"  {name}: {entry['breached']} breached, {entry['at_risk']} at risk")
            for t in entry["tickets"]:
                print(f"    #{t['number']:<6} {t['state']:<9} {t['priority']:<8} {t['due']:<22} {t['subject'][:50]}")
    return 0
