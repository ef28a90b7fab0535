"""`ticket-gateway outbox list|retry|flush`: outgoing mail and its delivery."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.base import UsageError
from gateway.exitcodes import EX_TEMPFAIL

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("outbox", help="outgoing mail: list, retry a failed one, deliver everything due now")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    ls = osub.add_parser("list", help="outgoing mail, newest first")
    ls.add_argument("--status", help="only this status: queued, sent, failed, suppressed")
    ls.add_argument("--limit", type=int, default=50, help="at most this many rows (0: all; default 50)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_outbox)
    rt = osub.add_parser("retry", help="queue a failed (or deferred) mail again, due now")
    rt.add_argument("ids", type=int, nargs="+", metavar="ID")
    rt.set_defaults(func=retry_outbox)
    fl = osub.add_parser("flush", help="deliver everything due now and exit (exit 75 when some mail had to "
                         "be deferred)")
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=flush_outbox)


def list_outbox(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.models import OUTBOX_STATUSES
    from gateway.ops.outbox import list_outbox as list_op
    from gateway.ops.pages import MAX_LIMIT

    if args.status and args.status not in OUTBOX_STATUSES:
        raise UsageError(f"--status must be one of {', '.join(OUTBOX_STATUSES)}")
    app = open_app(config, upgrade=True)
    out: list[dict[str, Any]] = []
    cursor = None
    try:
        while True:  # pages of the shared operation, up to --limit (0: all)
            want = min(MAX_LIMIT, args.limit - len(out)) if args.limit else MAX_LIMIT
            page = list_op(app, status=args.status, limit=want, cursor=cursor)
            out += page.items
            cursor = page.next_cursor
            if not cursor or (args.limit and len(out) >= args.limit):
                break
    finally:
        app.close()
    if args.json:
        json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    if not out:
        print("no outgoing mail")
        return 0
    from gateway.cli.table import print_table

    print_table(("id", "status", "tries", "when", "ticket", "event", "to", "subject", "error"),
                ((r["id"], r["status"], r["attempts"],
                  (r["sent_at"] or r["next_attempt_at"] or r["created_at"] or "")[:19],
                  f"#{r['ticket']}" if r["ticket"] else None, r["event"], r["recipient"], r["subject"],
                  r["last_error"] if r["status"] != "sent" else None) for r in out),
                caps={"to": 40, "subject": 50, "error": 100})
    return 0


def retry_outbox(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.exitcodes import EX_DATAERR, EX_NOINPUT
    from gateway.ops.errors import NotFound as NotFoundOp
    from gateway.ops.errors import OpError
    from gateway.ops.outbox import retry_outbox as retry_op

    app = open_app(config, upgrade=True)
    rc = 0
    try:
        for i in args.ids:
            try:
                row = retry_op(app, i)
                print(f"outbox {i}: queued again for {row['recipient']}")
            except OpError as e:
                print(f"ticket-gateway: {e.detail}", file=sys.stderr)
                rc = rc or (EX_NOINPUT if isinstance(e, NotFoundOp) else EX_DATAERR)
    finally:
        app.close()
    return rc


def flush_outbox(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.outbound.sender import flush

    app = open_app(config, upgrade=True)
    c = flush(app)
    if args.json:
        print(json.dumps(c.as_dict()))
    else:
        print(f"sent {c.sent}, deferred {c.deferred}, failed {c.failed}")
        for e in c.errors[:10]:
            print(f"  {e}", file=sys.stderr)
    return EX_TEMPFAIL if c.deferred else 0
