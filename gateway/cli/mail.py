"""`ticket-gateway mail list|show|replay`: every inbound mail and what became of it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.base import UsageError

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("mail", help="inbound mail: list, show with decision trace, replay quarantined")
    msub = p.add_subparsers(dest="mail_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="every inbound mail, newest first")
    ls.add_argument("--status", help="only this outcome: received, ticket, comment, ignored, duplicate, "
                    "rejected, quarantined")
    ls.add_argument("--limit", type=int, default=0)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_mail)
    sh = msub.add_parser("show", help="one mail with its decision trace")
    sh.add_argument("id", type=int)
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--raw", action="store_true", help="print the raw message")
    sh.set_defaults(func=show_mail)
    rp = msub.add_parser("replay", help="run a quarantined or rejected mail through the pipeline again")
    rp.add_argument("ids", type=int, nargs="+", metavar="ID")
    rp.set_defaults(func=replay_mail)


def list_mail(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.models import MAIL_OUTCOMES
    from gateway.ops.mail import list_mail as list_op
    from gateway.ops.pages import MAX_LIMIT

    if args.status and args.status not in MAIL_OUTCOMES:
        raise UsageError(f"--status must be one of {', '.join(MAIL_OUTCOMES)}")
    app = open_app(config, upgrade=True)
    rows: list[dict[str, Any]] = []
    cursor = None
    try:
        while True:  # pages of the shared operation, up to --limit (0: all)
            want = min(MAX_LIMIT, args.limit - len(rows)) if args.limit else MAX_LIMIT
            page = list_op(app, status=args.status, limit=want, cursor=cursor)
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
        print("no mail")
        return 0
    from gateway.cli.table import print_table

    print_table(("id", "received", "source", "outcome", "ticket", "from", "subject", "reason"),
                ((r["id"], (r["received_at"] or "")[:19], r["source"], r["outcome"],
                  f"#{r['ticket']}" if r["ticket"] else None, r["sender"], r["subject"],
                  r["reason"] if r["outcome"] not in ("ticket", "comment") else None) for r in rows),
                caps={"from": 40, "subject": 50, "reason": 80})
    return 0


def show_mail(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.mail import get_mail, raw_mail

    app = open_app(config, upgrade=True)
    try:
        if args.raw:
            sys.stdout.buffer.write(raw_mail(app, args.id))
            return 0
        d = get_mail(app, args.id)
    finally:
        app.close()
    if args.json:
        json.dump(d, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    from gateway.cli.table import text_of

    for k in ("id", "message_id", "sender", "subject", "source", "source_ref", "envelope_from", "envelope_to",
              "received_at", "processed_at", "size", "sha256", "outcome", "reason", "ticket", "attempts"):
        v = d[k]
        v = ", ".join(v) if isinstance(v, list) else f"#{v}" if k == "ticket" and v else v
        print(f"{k + ':':<15} {text_of(v)}")
    if d["client_ip"] or d["client_helo"]:
        print(f"{'client:':<15} {d['client_ip'] or '-'} (HELO {d['client_helo'] or '-'})")
    if d["authentication"]:
        from gateway.auth import AuthResult

        print(f"{'authentication:':<15} {AuthResult.from_dict(d['authentication']).summary()}")
    else:
        print(f"{'authentication:':<15} not checked")
    if d["released"]:
        print(f"{'released:':<15} {', '.join(d['released'])} (by replay)")
    print("trace:")
    for line in d["trace"]:
        print(f"  - {line}")
    return 0


def replay_mail(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.db import StoreUnavailable
    from gateway.exitcodes import EX_DATAERR, EX_NOINPUT, EX_TEMPFAIL
    from gateway.ops.errors import NotFound as NotFoundOp
    from gateway.ops.errors import OpError
    from gateway.ops.mail import replay_mail as replay_op

    app = open_app(config, upgrade=True)
    status = 0
    for mail_id in args.ids:
        try:
            r = replay_op(app, mail_id)
        except OpError as e:
            print(f"ticket-gateway: mail replay {mail_id}: {e.detail}", file=sys.stderr)
            status = status or (EX_NOINPUT if isinstance(e, NotFoundOp) else EX_DATAERR)
            continue
        except StoreUnavailable as e:
            print(f"ticket-gateway: store unavailable: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        print(f"mail {mail_id}: {r['outcome']}" + (f" #{r['ticket']}" if r["ticket"] else "")
              + (f" ({r['reason']})" if r["reason"] else ""))
    return status
