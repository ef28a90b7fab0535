"""`ticket-gateway ingest [PATH ...]`: message files, Maildirs, mboxes, or one message on stdin (MTA pipe).

Files, Maildirs (with Maildir++ subfolders) and mboxes are an import of old mail: tickets and comments keep
the mail's Date where plausible (gateway.history), the SLA records what was already due at the import without
escalating it, and nobody is mailed unless --notify. Stdin is live mail (an MTA pipe): notified, dated now.
A mail over `limits.max_message_size` is refused: not read, not stored, left where it is, reported
('refused', exit 65); on stdin the MTA bounces it (exit 65, as `deliver` and SMTP's 552).

Exit 0 when every mail was stored (ticket, comment, ignored, duplicate, rejected and quarantined all count),
75 (EX_TEMPFAIL) when a mail could not be stored so that the MTA tries again, 64 on usage errors, 65/66
when an input cannot be read, 67 (EX_NOUSER) when a --recipient is not a gateway address (nothing is stored:
an MTA pipe bounces the mail, as the LMTP listener answers 550).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from gateway.cli.base import UsageError
from gateway.cli.sources import Source, iter_sources
from gateway.exitcodes import EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_OK, EX_TEMPFAIL

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.cli.base import Subparsers
    from gateway.config import Config
    from gateway.envelope import Envelope
    from gateway.intake import Result
    from gateway.prepare import ParseAhead

# One write transaction holds at most this many mails (and gateway.engine's bounds of bytes and seconds).
BATCH_MAILS = 200


def register(sub: Subparsers) -> None:
    p = sub.add_parser("ingest", help="take mail from files, Maildirs, mboxes or stdin")
    p.add_argument("paths", nargs="*", metavar="PATH", help="message file, Maildir or mbox; '-' or none: stdin")
    p.add_argument("--dry-run", action="store_true", help="show what would happen, write nothing")
    p.add_argument("--json", action="store_true", help="one JSON object per mail")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--sender", metavar="ADDR", help="envelope sender (MTA pipe: ${sender})")
    p.add_argument("--recipient", metavar="ADDR", action="append", default=[],
                   help="envelope recipient (MTA pipe: ${original_recipient}); repeatable")
    p.add_argument("--client-ip", metavar="IP", help="the SMTP client's address, for SPF (MTA pipe: "
                   "${client_address})")
    p.add_argument("--helo", metavar="NAME", help="the SMTP client's HELO name, for SPF (MTA pipe: ${client_helo})")
    p.add_argument("--batch", type=int, default=BATCH_MAILS, metavar="N",
                   help=f"files, Maildirs, mboxes: at most N mails per write transaction (default {BATCH_MAILS})")
    p.add_argument("--notify", action="store_true",
                   help="files, Maildirs, mboxes: send the notifications (acknowledgements, ...) as for live mail; "
                        "by default an import mails nobody")
    p.add_argument("--no-parse-ahead", dest="parse_ahead", action="store_false",
                   help="prepare (parse) in the main process only: no worker process, no CPU budget per mail")
    p.set_defaults(func=run)


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.n = 0

    def step(self, total: int | None) -> None:
        self.n += 1
        if self.enabled and total and total > 1:
            width = 30
            done = int(width * self.n / total)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {self.n}/{total}")
            if self.n >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _refused(args: argparse.Namespace, config: Config, paths: list[str]) -> int | None:
    """The exit code when the command cannot run as given (nothing is read or stored), else None."""
    for a in paths:
        if not os.path.exists(a):
            print(f"ticket-gateway: ingest: no such file or directory: {a}", file=sys.stderr)
            return EX_NOINPUT
    foreign = [r for r in args.recipient if not config.is_gateway_address(r.strip().strip("<>"))]
    if foreign:  # one run is one delivery: a recipient that is not ours refuses it (Postfix: recipient limit 1)
        print(f"ticket-gateway: ingest: 5.1.1 <{foreign[0]}>: not a gateway address", file=sys.stderr)
        return EX_NOUSER
    return None


def _worker(args: argparse.Namespace, config: Config) -> ParseAhead | None:
    """The preparation worker (gateway.prepare: parse, HTML, classify, attachments, within
    limits.mail_cpu_seconds), forked before the database is opened: it holds no connection of ours."""
    if not args.parse_ahead:
        return None
    from gateway.engine import start_worker

    return start_worker(config, sender=args.sender, blobs=not args.dry_run)


class Reporter:
    """What ingest prints about each mail, and the counts for the summary."""

    def __init__(self, args: argparse.Namespace, max_size: int) -> None:
        self.args = args
        self.max_size = max_size
        self.counts: dict[str, int] = {}
        self.progress = Progress(sys.stderr.isatty() and not args.json)
        self.status = EX_OK

    def unreadable(self, src: Source) -> None:
        """A source not read: unreadable, or (its size given) over limits.max_message_size, left in place."""
        self.progress.step(src.total)
        self.status = self.status or EX_DATAERR
        if src.size is None:
            print(f"ticket-gateway: ingest: cannot read {src.ref}", file=sys.stderr)
            return
        reason = (f"too large: {src.size} bytes, over limits.max_message_size = {self.max_size}; not imported, "
                  "left in place")
        self.counts["refused"] = self.counts.get("refused", 0) + 1
        if self.args.json:
            print(json.dumps({"mail_id": None, "outcome": "refused", "reason": reason, "ticket": None,
                              "comment_id": None, "trace": [], "source": src.ref}))
        print(f"ticket-gateway: ingest: {src.ref}: {reason}", file=sys.stderr)

    def report(self, src: Source, result: Result) -> None:
        self.progress.step(src.total)
        args = self.args
        self.counts[result.outcome] = self.counts.get(result.outcome, 0) + 1
        if args.json:
            d = result.as_dict()
            d["source"] = src.ref
            print(json.dumps(d, ensure_ascii=False))
        elif args.dry_run:
            print(f"{src.ref}: would be {result.outcome}"
                  + (f" on ticket #{result.ticket_number}" if result.ticket_number else "")
                  + (f": {result.reason}" if result.reason else ""))
            for line in result.trace:
                print(f"  {line}")
        elif not args.quiet and (src.total or 0) <= 1:
            print(f"mail {result.mail_id}: {result.outcome}"
                  + (f" #{result.ticket_number}" if result.ticket_number else "")
                  + (f" ({result.reason})" if result.reason else ""))

    def summary(self) -> None:
        if not self.args.quiet and not self.args.json and sum(self.counts.values()) > 1:
            print(", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())))


def _one_by_one(app: App, sources: Iterator[Source], envelope: Callable[[Source], Envelope],
                ahead: ParseAhead | None, out: Reporter) -> None:
    """The MTA pipe (stdin) and dry runs: each mail stored and threaded in one transaction of its own (a dry
    run rolls it back), prepared by the worker first."""
    from gateway.db import StoreUnavailable
    from gateway.engine import ImportStopped

    intake = app.intake()
    auth = app.auth
    for src in sources:
        if src.raw is None:
            out.unreadable(src)
            continue
        env = envelope(src)
        if src.source == "stdin" and auth is not None and auth.active:  # sender authentication on arrival
            env = auth.envelope(src.raw, env)
        prepared = ahead.prepare([src.raw], [env.mail_from])[0] if ahead is not None else None
        try:
            result = intake.ingest(src.raw, env, dry_run=out.args.dry_run, durable_first=False, prepared=prepared)
        except StoreUnavailable as e:
            raise ImportStopped(f"could not store {src.ref}: {e}") from e
        out.report(src, result)


def _never_low() -> bool:
    return False


def run(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.db import is_unavailable

    paths = [a for a in args.paths if a != "-"]
    stdin = not args.paths or "-" in args.paths
    if stdin and paths:
        raise UsageError("ingest: read stdin ('-') or paths, not both")
    if args.batch < 1:
        raise UsageError("ingest: --batch must be at least 1")
    refused = _refused(args, config, paths)
    if refused is not None:
        return refused
    ahead = _worker(args, config)
    try:
        app = open_app(config, upgrade=not args.dry_run)
    except Exception as e:  # noqa: BLE001
        if ahead is not None:
            ahead.close()
        if is_unavailable(e):
            print(f"ticket-gateway: store unavailable, try again later: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        raise
    try:
        return _ingest(args, config, app, ahead, stdin, paths)
    finally:
        if ahead is not None:
            ahead.close()
        app.close()


def _ingest(args: argparse.Namespace, config: Config, app: App, ahead: ParseAhead | None, stdin: bool,
            paths: list[str]) -> int:
    from gateway.engine import Engine, ImportStopped
    from gateway.envelope import Envelope

    rcpts = tuple(a.lower() for a in args.recipient)

    def envelope(src: Source) -> Envelope:
        historic = src.source != "stdin"  # files, Maildirs, mboxes: old mail (see the module's text)
        return Envelope(mail_from=args.sender, rcpt_tos=rcpts, source=src.source,
                        source_ref=None if src.source == "stdin" else src.ref, client_ip=args.client_ip or None,
                        client_helo=args.helo or None, historic=historic, quiet=historic and not args.notify)

    disk_low = app.disk.low if app.disk is not None else _never_low
    if not args.dry_run and disk_low():
        print(f"ticket-gateway: free space in {config.data_dir} is below limits.free_space_factor x "
              "limits.max_message_size: try again later", file=sys.stderr)
        return EX_TEMPFAIL
    max_size = int(config.limits["max_message_size"])
    if stdin:
        from gateway.deliver import read_limited

        raw = read_limited(sys.stdin.buffer, max_size)
        if raw is None:  # the MTA bounces it to its sender, as SMTP's 552 and `deliver` do
            print(f"ticket-gateway: ingest: 5.3.4 message too large (over limits.max_message_size = {max_size} "
                  "bytes)", file=sys.stderr)
            return EX_DATAERR
        sources: Iterator[Source] = iter([Source("stdin", "stdin", raw, 1, len(raw))])
    else:
        sources = iter_sources(paths, max_size)
    out = Reporter(args, max_size)
    try:
        if stdin or args.dry_run:
            _one_by_one(app, sources, envelope, ahead, out)
        else:
            # files, Maildirs and mboxes stay where they are until we return: many mails go into one write
            # transaction (a savepoint each), and a mail is reported only once the commit holding it returned
            Engine(app).import_stream(sources, envelope, report=out.report, unreadable=out.unreadable, ahead=ahead,
                                      batch_mails=args.batch, disk_low=disk_low)
    except ImportStopped as e:
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    out.summary()
    return out.status
