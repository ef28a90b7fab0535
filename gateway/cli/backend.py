"""`ticket-gateway backend check|flush|poll|list|retry|show`: the external service desk."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.base import UsageError
from gateway.exitcodes import EX_CONFIG, EX_TEMPFAIL

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("backend", help="the external service desk: check the mapping, deliver, poll, list")
    bsub = p.add_subparsers(dest="backend_command", metavar="ACTION", required=True)
    ck = bsub.add_parser("check", help="verify the credentials and every mapped id against the live desk "
                         "(exit 78 when something is missing)")
    ck.set_defaults(func=check)
    fl = bsub.add_parser("flush", help="deliver every queued push now (exit 75 when some had to be deferred)")
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=flush)
    po = bsub.add_parser("poll", help="read the desk's changes since the last poll once")
    po.set_defaults(func=poll)
    ls = bsub.add_parser("list", help="queued, failed or delivered pushes, newest first")
    ls.add_argument("--status", help="queued, done or failed")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_pushes)
    rt = bsub.add_parser("retry", help="queue a failed push again, due now")
    rt.add_argument("ids", type=int, nargs="+", metavar="ID")
    rt.set_defaults(func=retry)
    sh = bsub.add_parser("show", help="a ticket's remote request, status and pushes")
    sh.add_argument("number", type=int)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=show)


def _app(config: Config) -> App | None:
    from gateway.backends import broker_settings
    from gateway.cli.base import open_app

    app = open_app(config, upgrade=True)
    if broker_settings(app) is None:
        print("ticket-gateway: no external desk configured ([backend] kind = \"builtin\")", file=sys.stderr)
        return None
    return app


def check(args: argparse.Namespace, config: Config) -> int:
    from gateway.backends import open_broker
    from gateway.backends.desk import DeskError

    app = _app(config)
    if app is None:
        return EX_CONFIG
    from gateway.backends import broker_settings

    s = broker_settings(app)
    assert s is not None  # _app returned None otherwise

    async def go() -> list[Any]:
        async with open_broker(app) as b:
            return await b.desk.check()

    print(f"backend {s.name}: {s.kind} at {s.url}")
    try:
        lines = asyncio.run(go())
    except DeskError as e:
        print(f"MISSING credentials or desk: {e}")
        return EX_TEMPFAIL
    local = ("open", "in_progress", "pending", "resolved", "closed")
    missing_local = [st for st in local if s.remote_status_for(st) is None]
    for line in lines:
        print(line)
    if missing_local:
        print(f"note    local statuses with no remote status (not pushed): {', '.join(missing_local)}")
    print(f"{'ok     ' if s.webhook_secret_file else 'note   '} webhooks: "
          + (f"POST /api/v1/backends/{s.name}/webhook, signed" if s.webhook_secret_file
             else f"off (no webhook_secret_file): polling every {int(s.poll_seconds)} s"))
    bad = [li for li in lines if not li.ok]
    print(f"{len(bad)} missing" if bad else "everything mapped is there")
    return EX_CONFIG if bad else 0


def flush(args: argparse.Namespace, config: Config) -> int:
    from gateway.backends import open_broker

    app = _app(config)
    if app is None:
        return EX_CONFIG

    async def go() -> Any:
        async with open_broker(app) as b:
            return await b.flush()

    c = asyncio.run(go())
    if args.json:
        print(json.dumps(c.as_dict()))
    else:
        print(f"delivered {c.done}, deferred {c.deferred}, failed {c.failed}")
        for e in c.errors[:10]:
            print(f"  {e}", file=sys.stderr)
    return EX_TEMPFAIL if c.deferred else 0


def poll(args: argparse.Namespace, config: Config) -> int:
    from gateway.backends import open_broker
    from gateway.backends.desk import DeskError

    app = _app(config)
    if app is None:
        return EX_CONFIG

    async def go() -> Any:
        async with open_broker(app) as b:
            return await b.poll()

    try:
        out = asyncio.run(go())
    except DeskError as e:
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"{out['seen']} updated request(s) seen, {out['applied']} change(s) applied")
    return 0


def _row(r: Any, numbers: dict[int, int]) -> dict[str, Any]:
    from gateway.views import iso

    return {"id": r.id, "ticket": numbers.get(r.ticket_id), "op": r.op, "status": r.status, "attempts": r.attempts,
            "created_at": iso(r.created_at), "next_attempt_at": iso(r.next_attempt_at), "done_at": iso(r.done_at),
            "result": r.result, "last_error": r.last_error}


def list_pushes(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy import select

    from gateway.backends.store import QUEUE_STATUSES, BackendPush
    from gateway.views import ticket_numbers

    if args.status and args.status not in QUEUE_STATUSES:
        raise UsageError(f"--status must be one of {', '.join(QUEUE_STATUSES)}")
    app = _app(config)
    if app is None:
        return EX_CONFIG
    with app.sessions() as s:
        q = select(BackendPush).order_by(BackendPush.id.desc())
        if args.status:
            q = q.where(BackendPush.status == args.status)
        rows = s.scalars(q.limit(args.limit) if args.limit else q).all()
        numbers = ticket_numbers(s, [r.ticket_id for r in rows])
        out = [_row(r, numbers) for r in rows]
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    for r in out:
        print(f"{r['id']:<6} {r['status']:<7} {r['attempts']:>2} #{r['ticket'] or '-':<6} {r['op']:<12} "
              f"{(r['result'] or '')[:30]:<30}" + (f"  [{r['last_error'][:100]}]" if r["last_error"] else ""))
    if not out:
        print("no pushes")
    return 0


def retry(args: argparse.Namespace, config: Config) -> int:
    from gateway.backends.queue import retry as do_retry
    from gateway.exitcodes import EX_DATAERR

    app = _app(config)
    if app is None:
        return EX_CONFIG
    rc = 0
    for i in args.ids:
        try:
            do_retry(app.sessions, i, app.clock())
            print(f"push {i}: queued again")
        except (KeyError, ValueError) as e:
            print(f"ticket-gateway: {e.args[0] if e.args else e}", file=sys.stderr)
            rc = EX_DATAERR
    return rc


def show(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy import select

    from gateway.backends.store import BackendLink, BackendPush
    from gateway.exitcodes import EX_DATAERR
    from gateway.models import Ticket
    from gateway.views import iso

    app = _app(config)
    if app is None:
        return EX_CONFIG
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == args.number))
        link = s.scalar(select(BackendLink).where(BackendLink.ticket_id == t.id)) if t is not None else None
        if t is None or link is None:
            print(f"ticket-gateway: ticket #{args.number} is not brokered", file=sys.stderr)
            return EX_DATAERR
        out: dict[str, Any] = {
            "ticket": t.number, "backend": link.backend, "remote_key": link.remote_key, "ref": link.ref,
            "remote_status": link.remote_status, "status_note": link.status_note, "read_at": iso(link.read_at),
            "pushes": [_row(r, {t.id: t.number}) for r in s.scalars(
                select(BackendPush).where(BackendPush.ticket_id == t.id).order_by(BackendPush.id))]}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"#{out['ticket']} -> {out['backend']} {out['remote_key'] or '(not created yet)'}  reference {out['ref']}")
    print(f"remote status: {out['remote_status'] or '-'}" + (f"  ({out['status_note']})" if out["status_note"] else ""))
    for r in out["pushes"]:
        print(f"  {r['id']:<6} {r['op']:<12} {r['status']:<7} {r['attempts']:>2} "
              f"{r['result'] or r['last_error'] or ''}")
    return 0
