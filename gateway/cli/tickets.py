"""`ticket-gateway tickets list|create|set|show|comment|attachment|link|unlink|log|merge|watch|unwatch`: the
shared operations of gateway.ops.tickets and gateway.ops.work (the rules of gateway.workflow)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli.base import UsageError, parse_instant

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("tickets", help="list, show, open, change and comment on tickets")
    tsub = p.add_subparsers(dest="tickets_command", metavar="ACTION", required=True)
    ls = tsub.add_parser("list", help="the work queue: pending reminders due today first, then tickets where the "
                         "customer spoke last, then the rest (newest first within each)")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--status", help="only this status (open, in_progress, pending, resolved, closed)")
    ls.add_argument("--priority", help="only this priority (low, medium, high, critical)")
    ls.add_argument("--type", help="only this type (incident, problem, service_request, change_request)")
    ls.add_argument("--assignee", metavar="EMAIL", help="only tickets assigned to this staff member ('none': "
                    "unassigned)")
    ls.add_argument("--group", help="only this group ('none': no group)")
    ls.add_argument("--organisation", metavar="ORG", help="only this organisation's tickets")
    ls.add_argument("--tag", help="only tickets with this tag")
    ls.add_argument("--sla", metavar="STATE", help="only tickets in this SLA state (breached, paused, at_risk, "
                    "on_track, met, none)")
    ls.add_argument("--text", help="only tickets whose subject or description holds this text")
    ls.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ls.set_defaults(func=list_tickets)
    cr = tsub.add_parser("create", help="open a ticket (as the API's POST /api/v1/tickets)")
    cr.add_argument("--subject", required=True)
    cr.add_argument("--reporter", metavar="EMAIL", required=True, help="who it is for (registered when new)")
    cr.add_argument("--description", default="", help="the text ('-': read it from standard input)")
    cr.add_argument("--priority", default="medium")
    cr.add_argument("--type", default="incident")
    cr.add_argument("--group")
    cr.add_argument("--organisation", metavar="ORG")
    cr.add_argument("--tag", action="append", default=[], help="repeatable")
    cr.add_argument("--watcher", metavar="EMAIL", action="append", default=[], help="repeatable")
    cr.add_argument("--external-id", metavar="ID", help="your id for it: a second create with the same id "
                    "returns the first ticket")
    cr.add_argument("--json", action="store_true")
    cr.set_defaults(func=create_ticket)
    st = tsub.add_parser("set", help="change a ticket: status, priority, type, assignee, organisation, group, "
                         "tags, pending reminder (resolving or closing a ticket an open ticket blocks is refused)")
    st.add_argument("number", type=int)
    st.add_argument("--status", help="open, in_progress, pending, resolved, closed")
    st.add_argument("--priority", help="low, medium, high, critical")
    st.add_argument("--type", help="incident, problem, service_request, change_request")
    st.add_argument("--assignee", metavar="EMAIL", help="a staff contact (users add --staff); 'none' unassigns")
    st.add_argument("--group", help="group (queue); 'none' clears it")
    st.add_argument("--organisation", metavar="ORG", help="the ticket's organisation (orgs add); 'none' clears it")
    st.add_argument("--tags", metavar="LIST", help="the ticket's tags, comma-separated ('' clears them)")
    st.add_argument("--tag", metavar="TAG", action="append", default=[], help="add a tag; repeatable")
    st.add_argument("--untag", metavar="TAG", action="append", default=[], help="remove a tag; repeatable")
    st.add_argument("--remind-at", "--pending", dest="remind_at", metavar="DATE",
                    help="pending reminder (YYYY-MM-DD or an ISO-8601 time; no zone offset = UTC): on this date the "
                    "ticket returns to open and the assignee (or the group) gets a reminder mail; implies --status "
                    "pending; 'none' clears it")
    st.add_argument("--by", metavar="EMAIL", help="who makes the change (a contact; default: nobody)")
    st.add_argument("--json", action="store_true", help="print the changes as JSON")
    st.set_defaults(func=set_ticket)
    sh = tsub.add_parser("show", help="one ticket with its comments and attachments")
    sh.add_argument("number", type=int)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=show_ticket)
    cm = tsub.add_parser("comment", help="comment on a ticket (public ones are mailed like a staff reply)")
    cm.add_argument("number", type=int)
    cm.add_argument("--body", help="the text ('-': standard input)")
    cm.add_argument("--file", metavar="F", help="read the text from this file")
    cm.add_argument("--internal", action="store_true", help="an internal note: staff only")
    cm.add_argument("--as", dest="author", metavar="EMAIL", help="the contact who writes (default: the help desk)")
    cm.add_argument("--attach", metavar="FILE", action="append", default=[], help="attach a file; repeatable")
    cm.add_argument("--json", action="store_true")
    cm.set_defaults(func=comment_ticket)
    _register_work(tsub)
    at = tsub.add_parser("attachment", help="save an attachment of a ticket (ids: tickets show)")
    at.add_argument("number", type=int)
    at.add_argument("id", type=int)
    at.add_argument("-o", "--output", metavar="FILE", help="write here (default: its file name in the current "
                    "directory; '-': standard output)")
    at.set_defaults(func=save_attachment)


def _register_work(tsub: Any) -> None:
    """link, unlink, log, merge, watch, unwatch."""
    ln = tsub.add_parser("link", help="link two tickets: N blocks M, N duplicates M, N caused-by M (M is the root "
                         "cause), ...")
    ln.add_argument("number", type=int)
    ln.add_argument("other", type=int)
    ln.add_argument("--kind", required=True, help="relates, duplicates, duplicated-by, caused-by, causes, blocks, "
                    "blocked-by")
    ln.set_defaults(func=link_tickets)
    ul = tsub.add_parser("unlink", help="remove the links between two tickets")
    ul.add_argument("number", type=int)
    ul.add_argument("other", type=int)
    ul.add_argument("--kind", help="only this kind of link")
    ul.set_defaults(func=unlink_tickets)
    lg = tsub.add_parser("log", help="log time spent on a ticket (1h30m, 2h, 1.5h, 45m)")
    lg.add_argument("number", type=int)
    lg.add_argument("duration")
    lg.add_argument("--note", default="", help="what the time was spent on")
    lg.add_argument("--as", dest="author", metavar="EMAIL", help="who worked (a contact; default: the help desk)")
    lg.add_argument("--at", metavar="ISO-8601", help="when the work was done (default: now)")
    lg.set_defaults(func=log_time)
    mg = tsub.add_parser("merge", help="merge a ticket into another: comments, attachments, time, watchers and "
                         "Message-IDs move; it closes; mail to it lands on the other")
    mg.add_argument("number", type=int)
    mg.add_argument("--into", type=int, required=True, metavar="M")
    mg.add_argument("--by", metavar="EMAIL", help="who merges (a contact)")
    mg.set_defaults(func=merge_tickets)
    for name, what in (("watch", "add a watcher (mailed about the ticket)"), ("unwatch", "remove a watcher")):
        w = tsub.add_parser(name, help=what)
        w.add_argument("number", type=int)
        w.add_argument("email")
        w.set_defaults(func=watch_ticket if name == "watch" else unwatch_ticket)


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
    from gateway.cli.base import open_app
    from gateway.ops.pages import MAX_LIMIT
    from gateway.ops.tickets import list_tickets as list_op

    app = open_app(config, upgrade=True)
    rows: list[dict[str, Any]] = []
    cursor = None
    try:
        while True:  # pages of the shared operation, up to --limit (0: all)
            want = min(MAX_LIMIT, args.limit - len(rows)) if args.limit else MAX_LIMIT
            page = list_op(app, status=args.status, priority=args.priority, type=args.type, assignee=args.assignee,
                           group=args.group, organisation=args.organisation, tag=args.tag, sla=args.sla,
                           text=args.text, limit=want, cursor=cursor)
            rows += page.items
            cursor = page.next_cursor
            if not cursor or (args.limit and len(rows) >= args.limit):
                break
    finally:
        app.close()
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


def create_ticket(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.tickets import create_ticket as create_op

    description = sys.stdin.read() if args.description == "-" else args.description
    data = {"subject": args.subject, "reporter": args.reporter, "description": description,
            "priority": args.priority, "type": args.type, "group": args.group, "organisation": args.organisation,
            "tags": args.tag, "watchers": args.watcher, "external_id": args.external_id}
    app = open_app(config, upgrade=True)
    try:
        view, created = create_op(app, {k: v for k, v in data.items() if v not in (None, [], "")})
    finally:
        app.close()
    if args.json:
        json.dump({**view, "created": created}, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        print(f"#{view['number']}: {'opened' if created else 'exists already (same external id)'}: {view['subject']}")
    return 0


def _field_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The ticket fields `tickets set` was asked to change."""
    fields: dict[str, Any] = {}
    for name in ("status", "priority", "type"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.group is not None:
        fields["group"] = None if args.group.lower() in ("", "none") else args.group
    if args.assignee is not None:
        fields["assignee"] = None if args.assignee.lower() in ("", "none") else args.assignee
    if args.tags is not None:
        fields["tags"] = [t.strip() for t in args.tags.split(",") if t.strip()]
    if args.tag:
        fields["add_tags"] = args.tag
    if args.untag:
        fields["remove_tags"] = args.untag
    if args.organisation is not None:
        fields["organisation"] = None if args.organisation.lower() in ("", "none") else args.organisation
    if args.remind_at is not None:
        if args.remind_at.lower() in ("", "none"):
            fields["remind_at"] = None
        else:
            fields["remind_at"] = parse_instant(args.remind_at, "--remind-at")
            fields.setdefault("status", "pending")
            if fields["status"] != "pending":
                raise UsageError("--remind-at goes with --status pending")
    if not fields:
        raise UsageError("nothing to change (see tickets set --help)")
    return fields


def set_ticket(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.tickets import change_ticket

    fields = _field_changes(args)
    app = open_app(config, upgrade=True)
    try:
        result = change_ticket(app, args.number, fields, by=args.by)
    finally:
        app.close()
    out, sla = result["changes"], result["sla"]
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
    from gateway.cli.base import open_app
    from gateway.ops.tickets import get_ticket

    app = open_app(config, upgrade=True)
    try:
        d = get_ticket(app, args.number, full=True)
    finally:
        app.close()
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
    if d["tags"]:
        print(f"  tags {', '.join(d['tags'])}")
    if d["merged_into"]:
        print(f"  merged into #{d['merged_into']}")
    for link in d["links"]:
        other = f" ({link['status']}: {link['subject']})" if link.get("status") else ""
        print(f"  linked: {link['kind']} #{link['number']}{other}")
    if d["time_minutes"]:
        from gateway.workflow import format_minutes

        print(f"  time logged {format_minutes(d['time_minutes'])}")
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


def comment_ticket(args: argparse.Namespace, config: Config) -> int:
    import mimetypes
    from pathlib import Path

    from gateway.cli.base import open_app
    from gateway.ops.tickets import add_comment

    if (args.body is None) == (args.file is None) and not (args.attach and args.body is None and args.file is None):
        raise UsageError("give the text with --body TEXT or --file F (one of them)")
    body = args.body or ""
    if args.body == "-":
        body = sys.stdin.read()
    elif args.file:
        try:
            body = Path(args.file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--file {args.file}: {e}") from None
    files = []
    for f in args.attach:
        try:
            files.append((Path(f).name, mimetypes.guess_type(f)[0] or "application/octet-stream",
                          Path(f).read_bytes()))
        except OSError as e:
            raise UsageError(f"--attach {f}: {e}") from None
    app = open_app(config, upgrade=True)
    try:
        c = add_comment(app, args.number, body=body, internal=args.internal, author=args.author,
                        attachments=files, source="cli")
    finally:
        app.close()
    if args.json:
        json.dump(c, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        kind = "internal note" if c["internal"] else "comment"
        print(f"#{args.number}: {kind} {c['id']} added" + (f" with {len(c['attachments'])} attachment(s)"
                                                          if c["attachments"] else ""))
    return 0


def save_attachment(args: argparse.Namespace, config: Config) -> int:
    from pathlib import Path

    from gateway.cli.base import open_app
    from gateway.ops.tickets import get_attachment

    app = open_app(config, upgrade=True)
    try:
        meta, data = get_attachment(app, args.number, args.id)
    finally:
        app.close()
    if args.output == "-":
        sys.stdout.buffer.write(data)
        return 0
    target = Path(args.output or meta["filename"])  # the stored name is already a safe base name
    try:
        with open(target, "xb") as f:  # never overwrite
            f.write(data)
    except OSError as e:
        raise UsageError(f"{target}: {e}") from None
    print(f"{target}: {len(data)} bytes ({meta['content_type']})")
    return 0


def sla_lines(sla: dict[str, Any]) -> list[str]:
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


# Staff work: links, time, merge, watchers (gateway.ops.work) -------------------------------------------------
def _work(config: Config, op: str, *args: Any, **kw: Any) -> Any:
    from gateway.cli.base import open_app
    from gateway.ops import work

    app = open_app(config, upgrade=True)
    try:
        return getattr(work, op)(app, *args, **kw)
    finally:
        app.close()


def _print_links(number: int, links: list[dict[str, Any]]) -> None:
    for link in links:
        print(f"#{number}: {link['kind']} #{link['number']} ({link['status']}: {link['subject']})")


def link_tickets(args: argparse.Namespace, config: Config) -> int:
    from gateway.workflow import LINK_INPUT, spelled

    if spelled(args.kind) not in LINK_INPUT:
        raise UsageError(f"--kind: one of relates, duplicates, duplicated-by, caused-by, causes, blocks, blocked-by "
                         f"(got {args.kind!r})")
    r = _work(config, "link_tickets", args.number, args.other, args.kind)
    print(f"#{r['number']} {r['kind']} #{r['other']}" + ("" if r["created"] else " (linked already)"))
    return 0


def unlink_tickets(args: argparse.Namespace, config: Config) -> int:
    r = _work(config, "unlink_tickets", args.number, args.other, args.kind)
    print(f"#{r['number']}: {r['removed']} link(s) to #{r['other']} removed")
    _print_links(r["number"], r["links"])
    return 0


def log_time(args: argparse.Namespace, config: Config) -> int:
    at = parse_instant(args.at, "--at") if args.at else None
    r = _work(config, "log_time", args.number, args.duration, note=args.note, by=args.author, at=at)
    print(f"#{r['number']}: {r['duration']} logged" + (f" ({r['note']})" if r["note"] else "")
          + f"; total {r['total']}")
    return 0


def merge_tickets(args: argparse.Namespace, config: Config) -> int:
    r = _work(config, "merge", args.number, args.into, by=args.by)
    moved = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r["moved"].items())
    print(f"#{r['number']} merged into #{r['into']} (moved: {moved})")
    return 0


def watch_ticket(args: argparse.Namespace, config: Config) -> int:
    r = _work(config, "watch", args.number, args.email)
    print(f"#{r['number']}: {r['email']} " + ("watches it now" if r["added"] else "watches it already"))
    return 0


def unwatch_ticket(args: argparse.Namespace, config: Config) -> int:
    r = _work(config, "unwatch", args.number, args.email)
    print(f"#{r['number']}: {r['email']} no longer watches it")
    return 0
