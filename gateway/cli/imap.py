"""`ticket-gateway imap poll [--account NAME ...]`: drain the `[[imap]]` mailboxes once (cron, tests).

Exit 0 when every account was drained and its mail threaded; 75 (EX_TEMPFAIL) when a server could not be
reached, the database was unavailable or a mail could not be processed (a mail not stored stays on the
server; a stored mail whose threading was postponed is threaded by the next run); 64 for an unknown
--account; 78 when no `[[imap]]` account is configured, or when TLS cannot work as configured (the server's
certificate was not accepted, the ca_file cannot be loaded): trying again later would not help.

An account that another instance is polling (a running `serve` holds its lease in the database) is skipped,
which is not an error: its mail is being fetched.

`ticket-gateway imap status [--account NAME ...] [--no-connect] [--json]`: per account, which instance polls
it (its lease: holder host:pid:id, seconds left) and whether this host can log in, the certificate verified
as the poller verifies it, with the number of messages waiting. Exit 0; 78 when TLS cannot work as
configured; 75 when a server could not be reached or refused the login.
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
    from gateway.imap import ImapAccount


def register(sub: Subparsers) -> None:
    p = sub.add_parser("imap", help="IMAP mailboxes ([[imap]] accounts)")
    psub = p.add_subparsers(dest="imap_command", metavar="ACTION", required=True)
    poll = psub.add_parser("poll", help="fetch every message from the accounts once, then exit")
    poll.add_argument("--account", metavar="NAME", action="append", default=[],
                      help="only this account (repeatable; default: all)")
    poll.add_argument("--json", action="store_true", help="one JSON object per account")
    poll.set_defaults(func=run_poll)
    status = psub.add_parser("status", help="which instance polls each account (its lease), and whether this "
                             "host can log in (TLS verified)")
    status.add_argument("--account", metavar="NAME", action="append", default=[],
                        help="only this account (repeatable; default: all)")
    status.add_argument("--no-connect", action="store_true", help="only the leases: do not connect")
    status.add_argument("--json", action="store_true", help="one JSON object per account")
    status.set_defaults(func=run_status)


def _selected(args: argparse.Namespace, config: Config, command: str) -> list[ImapAccount]:
    """The accounts named by --account (all when none); ConfigError, UsageError as the commands report them."""
    from gateway.imap import accounts

    configured = accounts(config)
    if not configured:
        raise NoAccounts(f"imap {command}: no [[imap]] account is configured")
    names = {a.name for a in configured}
    unknown = [n for n in args.account if n not in names]
    if unknown:
        raise UsageError(f"imap {command}: no [[imap]] account named {unknown[0]!r} (known: "
                         f"{', '.join(sorted(names))})")
    return [a for a in configured if not args.account or a.name in args.account]


class NoAccounts(Exception):
    pass


def run_status(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when every account answered (or --no-connect), 78 when TLS cannot work as configured (certificate
    not accepted, ca_file unusable), 75 when a server could not be reached or refused the login."""
    from gateway.cli.base import open_app
    from gateway.config import ConfigError
    from gateway.imap import account_status

    try:
        selected = _selected(args, config, "status")
    except (ConfigError, NoAccounts) as e:
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_CONFIG
    app = open_app(config, upgrade=True)
    status = EX_OK
    try:
        for account in selected:
            st = account_status(app, account, connect=not args.no_connect)
            if st.get("login") == "tls":
                status = EX_CONFIG
            elif st.get("login") == "failed" and status == EX_OK:
                status = EX_TEMPFAIL
            if args.json:
                print(json.dumps(st, ensure_ascii=False))
                continue
            login = {"ok": f"login ok, {st.get('waiting')} message(s) waiting in {account.folder}"}.get(
                st.get("login", ""), st.get("error", ""))
            print(f"{st['account']}: {st['server']}; lease {st['lease']}" + (f"; {login}" if login else ""))
    finally:
        app.close()
    return status


def run_poll(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.config import ConfigError
    from gateway.db import is_unavailable
    from gateway.imap import ImapPoller, TlsSetupError

    try:
        selected = _selected(args, config, "poll")
    except ConfigError as e:
        print(f"ticket-gateway: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    except NoAccounts as e:
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_CONFIG
    from gateway.engine import start_worker

    # the stored mail is threaded as serve threads it: each mail's CPU work in the preparation worker, within
    # limits.mail_cpu_seconds (a mail over budget is quarantined 'over budget', the others go on); started
    # before the database is opened, as `ingest` starts it
    ahead = start_worker(config)
    try:
        app = open_app(config, upgrade=True)
    except Exception as e:  # noqa: BLE001
        ahead.close()
        if is_unavailable(e):
            print(f"ticket-gateway: store unavailable, try again later: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        raise
    app.ahead = ahead
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
        app.ahead = None
        ahead.close()
        app.close()
    return status
