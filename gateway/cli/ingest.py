"""`ticket-gateway ingest [PATH ...]`: message files, Maildirs, mboxes, or one message on stdin (MTA pipe).

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
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.base import UsageError
from gateway.exitcodes import EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_OK, EX_TEMPFAIL

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.config import Config
    from gateway.engine import Source
    from gateway.envelope import Envelope
    from gateway.intake import Result
    from gateway.prepare import ParseAhead

# One write transaction holds at most this many mails (and gateway.engine's bounds of bytes and seconds).
BATCH_MAILS = 200


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    p.add_argument("--no-parse-ahead", dest="parse_ahead", action="store_false",
                   help="prepare (parse) in the main process only: no worker process, no CPU budget per mail")
    p.set_defaults(func=run)


def _is_maildir(p: Path) -> bool:
    return p.is_dir() and (p / "cur").is_dir() and (p / "new").is_dir()


def _is_mbox(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            return f.read(5) == b"From "
    except OSError:
        return False


def iter_sources(paths: list[str]) -> Iterator[tuple[str, str, bytes | None, int | None]]:
    """(source, ref, raw bytes or None when unreadable, total count hint)."""
    import mailbox

    for arg in paths:
        p = Path(arg)
        if _is_maildir(p):
            files = sorted(f for d in ("new", "cur") for f in (p / d).iterdir() if f.is_file())
            for f in files:
                yield "maildir", str(f), _read(f), len(files)
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            for f in files:
                yield "file", str(f), _read(f), len(files)
        elif _is_mbox(p):
            box = mailbox.mbox(str(p), create=False)
            try:
                keys = box.keys()
                for k in keys:
                    yield "mbox", f"{p}#{k}", box.get_bytes(k), len(keys)
            finally:
                box.close()
        else:
            yield "file", str(p), _read(p), 1


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except OSError:
        return None


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

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts: dict[str, int] = {}
        self.progress = Progress(sys.stderr.isatty() and not args.json)
        self.status = EX_OK

    def unreadable(self, src: Source) -> None:
        self.progress.step(src.total)
        print(f"ticket-gateway: ingest: cannot read {src.ref}", file=sys.stderr)
        self.status = self.status or EX_DATAERR

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
    for src in sources:
        if src.raw is None:
            out.unreadable(src)
            continue
        env = envelope(src)
        if src.kind == "stdin" and app.auth.active:  # sender authentication on arrival (gateway.auth)
            env = app.auth.envelope(src.raw, env)
        prepared = ahead.prepare([src.raw], [env.mail_from])[0] if ahead is not None else None
        try:
            result = intake.ingest(src.raw, env, dry_run=out.args.dry_run, durable_first=False, prepared=prepared)
        except StoreUnavailable as e:
            raise ImportStopped(f"could not store {src.ref}: {e}") from e
        out.report(src, result)


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
    from gateway.engine import Engine, ImportStopped, Source
    from gateway.envelope import Envelope

    rcpts = tuple(a.lower() for a in args.recipient)

    def envelope(src: Source) -> Envelope:
        return Envelope(mail_from=args.sender, rcpt_tos=rcpts, source=src.kind,
                        source_ref=None if src.kind == "stdin" else src.ref, client_ip=args.client_ip or None,
                        client_helo=args.helo or None)

    if not args.dry_run and app.disk.low():
        print(f"ticket-gateway: free space in {config.data_dir} is below limits.free_space_factor x "
              "limits.max_message_size: try again later", file=sys.stderr)
        return EX_TEMPFAIL
    sources = (iter([Source("stdin", "stdin", sys.stdin.buffer.read(), 1)]) if stdin else
               (Source(*item) for item in iter_sources(paths)))
    out = Reporter(args)
    try:
        if stdin or args.dry_run:
            _one_by_one(app, sources, envelope, ahead, out)
        else:
            # files, Maildirs and mboxes stay where they are until we return: many mails go into one write
            # transaction (a savepoint each), and a mail is reported only once the commit holding it returned
            Engine(app).import_stream(sources, envelope, report=out.report, unreadable=out.unreadable, ahead=ahead,
                                      batch_mails=args.batch, disk_low=app.disk.low)
    except ImportStopped as e:
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    out.summary()
    return out.status
