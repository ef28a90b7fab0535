"""`ticket-gateway deliver` (the MTA pipe, gateway.deliver) and `ticket-gateway spool drain|list`.

`spool drain` stores every spooled mail through the intake (batches of many mails in one transaction, a
savepoint each) and removes each file after the commit that holds its mail; exit 0 when the spool is empty, 0
too when another drainer holds the lock (it drains), 75 when the store is unavailable (the files stay).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.exitcodes import EX_OK, EX_TEMPFAIL

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.cli.base import Subparsers
    from gateway.config import Config
    from gateway.envelope import Envelope

BATCH = 200


def register(sub: Subparsers) -> None:
    d = sub.add_parser("deliver", help="MTA pipe: spool one mail from stdin durably (fast), exit 0",
                       add_help=False)
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(func=run_deliver)
    p = sub.add_parser("spool", help="mails delivered by the MTA pipe and not stored yet")
    psub = p.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    drain = psub.add_parser("drain", help="store every spooled mail (what serve does), then exit")
    drain.set_defaults(func=run_drain)
    ls = psub.add_parser("list", help="spooled mails waiting")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)


def run_deliver(args: argparse.Namespace, config: Config) -> int:
    """Reached only through the full parser (e.g. `--verbose deliver`); `entry` normally takes the fast path."""
    from gateway.deliver import main

    argv = list(args.rest)
    if args.config:
        argv = ["--config", args.config] + argv
    return main(argv)


def _spooled(app: App, files: list[Path]) -> list[tuple[bytes, Envelope]]:
    """(raw, Envelope) of each file, sender authentication checked on arrival as for the other live sources
    (DNS work: before the write transaction opens, never under the write lock)."""
    from gateway.spooldrain import read_spooled

    out = [read_spooled(f) for f in files]
    if app.auth is not None and app.auth.active:
        out = [(raw, app.auth.envelope(raw, envelope)) for raw, envelope in out]
    return out


def drain_once(app: App, where: Path, batch_size: int = BATCH) -> int:
    """Store the spooled mails that are there now (the caller holds the drain lock); returns how many."""
    from gateway import spool

    done = 0
    while True:
        files = spool.pending(where, batch_size)
        if not files:
            return done
        mails = _spooled(app, files)
        batch = app.intake().batch()
        try:
            for raw, envelope in mails:
                batch.ingest(raw, envelope)
            batch.commit()
        finally:
            batch.close()
        spool.remove(files)
        done += len(files)


def run_drain(args: argparse.Namespace, config: Config) -> int:
    from gateway import spool
    from gateway.cli.base import open_app
    from gateway.db import StoreUnavailable

    where = spool.spool_dir(config.data_dir)
    lock = spool.DrainLock(where)
    total = 0
    while spool.pending(where, 1):
        if not lock.acquire():
            return EX_OK  # somebody else drains (the service, or another drainer)
        try:
            app = open_app(config, upgrade=True)
            try:
                total += drain_once(app, where)
            finally:
                app.close()
        except StoreUnavailable as e:
            print(f"ticket-gateway: spool drain: store unavailable, the mails stay spooled: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        finally:
            lock.release()
        # a mail spooled after our last look found the lock held and did not start a drainer: look again
    if getattr(args, "verbose", False):
        print(f"drained {total} mail(s)", file=sys.stderr)
    return EX_OK


def run_list(args: argparse.Namespace, config: Config) -> int:
    from gateway import spool

    where = spool.spool_dir(config.data_dir)
    rows: list[dict[str, Any]] = []
    for f in spool.pending(where, 10_000):
        try:
            raw, env = spool.read(f)
        except (OSError, ValueError):
            raw, env = b"", {}
        rows.append({"file": f.name, "size": len(raw), "sender": env.get("mail_from"),
                     "recipients": env.get("rcpt_tos") or []})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['file']}  {r['size']:>9}  {r['sender'] or '-'} -> {', '.join(r['recipients']) or '-'}")
        print(f"{len(rows)} spooled mail(s) in {where}", file=sys.stderr)
    return EX_OK
