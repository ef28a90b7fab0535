"""`ticket-gateway imap poll [--account NAME ...]`: drain the `[[imap]]` mailboxes once (cron, tests).

Exit 0 when every account was drained and its mail threaded; 75 (EX_TEMPFAIL) when a server could not be
reached, the database was unavailable or a mail could not be processed (a mail not stored stays on the
server; a stored mail whose threading was postponed is threaded by the next run); 64 for an unknown
--account; 78 when no `[[imap]]` account is configured, or when TLS cannot work as configured (the server's
certificate was not accepted, the ca_file cannot be loaded): trying again later would not help.

An account that another instance is polling (a running `serve` holds its lease in the database) is skipped,
which is not an error: its mail is being fetched.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from gateway.cli.base import UsageError
from gateway.exitcodes import EX_CONFIG, EX_OK, EX_TEMPFAIL

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("imap", help="IMAP mailboxes ([[imap]] accounts)")
    psub = p.add_subparsers(dest="imap_command", metavar="ACTION", required=True)
    poll = psub.add_parser("poll", help="fetch every message from the accounts once, then exit")
    poll.add_argument("--account", metavar="NAME", action="append", default=[],
                      help="only this account (repeatable; default: all)")
    poll.add_argument("--json", action="store_true", help="one JSON object per account")
    poll.set_defaults(func=run_poll)


def run_poll(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.config import ConfigError
    from gateway.db import is_unavailable
    from gateway.imap import ImapPoller, TlsSetupError, accounts

    try:
        configured = accounts(config)
    except ConfigError as e:
        print(f"ticket-gateway: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    if not configured:
        print("ticket-gateway: imap poll: no [[imap]] account is configured", file=sys.stderr)
        return EX_CONFIG
    names = {a.name for a in configured}
    unknown = [n for n in args.account if n not in names]
    if unknown:
        raise UsageError(f"imap poll: no [[imap]] account named {unknown[0]!r} (known: {', '.join(sorted(names))})")
    selected = [a for a in configured if not args.account or a.name in args.account]
    try:
        app = open_app(config, upgrade=True)
    except Exception as e:  # noqa: BLE001
        if is_unavailable(e):
            print(f"ticket-gateway: store unavailable, try again later: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        raise
    status = EX_OK
    try:
        for account in selected:
            try:
                result = ImapPoller(app, account).poll_once()
            except TlsSetupError as e:
                if args.json:
                    print(json.dumps({"account": account.name, "error": f"TLS: {e}"}))
                print(f"ticket-gateway: imap {account.name}: TLS: {e}", file=sys.stderr)
                status = EX_CONFIG
                continue
            except Exception as e:  # noqa: BLE001 -- one account's trouble does not stop the others
                if args.json:
                    print(json.dumps({"account": account.name, "error": f"{type(e).__name__}: {e}"}))
                print(f"ticket-gateway: imap {account.name}: {type(e).__name__}: {e}", file=sys.stderr)
                status = EX_TEMPFAIL if status == EX_OK else status
                continue
            if (result.deferred or result.failed or result.postponed) and status == EX_OK:
                status = EX_TEMPFAIL
            if args.json:
                print(json.dumps(result.as_dict(), ensure_ascii=False))
            elif result.standby:
                print(f"{account.name}: skipped, another instance polls this mailbox ({result.standby})")
            else:
                outcomes = ", ".join(f"{n} {k}" for k, n in sorted(result.outcomes.items())) or "nothing new"
                extra = [f"{getattr(result, k)} {k}" for k in ("known", "oversize", "deferred", "failed",
                                                                 "postponed") if getattr(result, k)]
                print(f"{account.name}: {result.fetched} fetched ({outcomes}); {result.moved} moved to "
                      f"{account.processed_folder or '(deleted)'}, {result.quarantined} to "
                      f"{account.quarantine_folder or account.processed_folder or '(deleted)'}"
                      + (f"; {', '.join(extra)}" if extra else ""))
    finally:
        app.close()
    return status
