"""`ticket-gateway outbox list|retry|flush`: outgoing mail and its delivery."""

from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import EX_TEMPFAIL, UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def _row(r, numbers) -> dict:  # type: ignore[no-untyped-def]
    from gateway.views import iso

    return {"id": r.id, "created_at": iso(r.created_at), "ticket": numbers.get(r.ticket_id), "event": r.event,
            "recipient": r.recipient, "subject": r.subject, "message_id": r.message_id, "status": r.status,
            "attempts": r.attempts, "next_attempt_at": iso(r.next_attempt_at), "sent_at": iso(r.sent_at),
            "last_error": r.last_error}


def list_outbox(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.cli import open_app
    from gateway.models import OUTBOX_STATUSES, OutboxMail
    from gateway.views import ticket_numbers

    if args.status and args.status not in OUTBOX_STATUSES:
        raise UsageError(f"--status must be one of {', '.join(OUTBOX_STATUSES)}")
    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        q = select(OutboxMail).order_by(OutboxMail.id.desc())
        if args.status:
            q = q.where(OutboxMail.status == args.status)
        if args.limit:
            q = q.limit(args.limit)
        rows = s.scalars(q).all()
        numbers = ticket_numbers(s, [r.ticket_id for r in rows])
        out = [_row(r, numbers) for r in rows]
    if args.json:
        json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    if not out:
        print("no outgoing mail")
        return 0
    from gateway.cli.table import print_table

    print_table(("id", "status", "tries", "when", "ticket", "event", "to", "subject", "error"),
                ((r["id"], r["status"], r["attempts"], (r["sent_at"] or r["next_attempt_at"] or r["created_at"] or "")[:19],
                  f"#{r['ticket']}" if r["ticket"] else None, r["event"], r["recipient"], r["subject"],
                  r["last_error"] if r["status"] != "sent" else None) for r in out),
                caps={"to": 40, "subject": 50, "error": 100})
    return 0


def retry_outbox(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import EX_DATAERR, EX_NOINPUT, open_app
    from gateway.outbound.sender import retry

    app = open_app(config, upgrade=True)
    rc = 0
    for i in args.ids:
        try:
            row = retry(app, i)
            print(f"outbox {i}: queued again for {row.recipient}")
        except (KeyError, ValueError) as e:
            print(f"ticket-gateway: {e.args[0] if e.args else e}", file=sys.stderr)
            rc = rc or (EX_NOINPUT if isinstance(e, KeyError) else EX_DATAERR)
    return rc


def flush_outbox(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import open_app
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
