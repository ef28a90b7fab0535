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
from pathlib import Path
from typing import Iterator, TypeVar

from gateway.cli.base import UsageError
from gateway.cli.sources import Source, is_mbox, iter_sources
from gateway.exitcodes import EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_OK, EX_TEMPFAIL

T = TypeVar("T")

# One write transaction holds at most this many mails, bytes of mail, or seconds of work: few commits, and
# the write lock is never held long enough to starve a concurrent writer (the service's listeners).
BATCH_MAILS = 200
BATCH_BYTES = 64 * 2**20
BATCH_SECONDS = 1.0
# Mails whose lookups are made together (gateway.prefetch), when the parse-ahead worker has parsed them.
PREFETCH = 16


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
    p.add_argument("--notify", action="store_true",
                   help="files, Maildirs, mboxes: send the notifications (acknowledgements, ...) as for live mail; "
                        "by default an import mails nobody")
    p.add_argument("--no-parse-ahead", dest="parse_ahead", action="store_false",
                   help="files, Maildirs, mboxes: parse in the main process only (no worker process)")
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


def _chunks(items: Iterator[T], n: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli.base import open_app
    from gateway.db import StoreUnavailable
    from gateway.intake import Envelope

    paths = [a for a in args.paths if a != "-"]
    stdin = not args.paths or "-" in args.paths
    if stdin and paths:
        raise UsageError("ingest: read stdin ('-') or paths, not both")
    for a in paths:
        if not os.path.exists(a):
            print(f"ticket-gateway: ingest: no such file or directory: {a}", file=sys.stderr)
            return EX_NOINPUT
    foreign = [r for r in args.recipient if not config.is_gateway_address(r.strip().strip("<>"))]
    if foreign:  # one run is one delivery: a recipient that is not ours refuses it (Postfix: recipient limit 1)
        print(f"ticket-gateway: ingest: 5.1.1 <{foreign[0]}>: not a gateway address", file=sys.stderr)
        return EX_NOUSER
    # Several mails: the pure work (parse, HTML, attachment blobs) runs ahead in a worker process
    # (gateway.prepare); the database work stays here, in order. Anything the worker did not do is done here.
    # The worker is forked before the database is opened: it holds no connection of ours.
    ahead = None
    if (not stdin and not args.dry_run and args.parse_ahead and args.batch >= 1
            and (len(paths) > 1 or any(os.path.isdir(a) or is_mbox(Path(a)) for a in paths))):
        from gateway.autoreply import own_domains_of
        from gateway.prepare import ParseAhead

        limits = config.limits
        ahead = ParseAhead(max_depth=limits["max_mime_depth"], max_parts=limits["max_mime_parts"],
                           blob_root=str(config.attachments_dir),
                           classify_for=(args.sender, own_domains_of(config.gateway_addresses)),
                           budget=float(limits["mail_cpu_seconds"]))
        ahead.start()
    try:
        app = open_app(config, upgrade=not args.dry_run)
    except Exception as e:  # noqa: BLE001
        if ahead is not None:
            ahead.close()
        from gateway.db import is_unavailable

        if is_unavailable(e):
            print(f"ticket-gateway: store unavailable, try again later: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        raise
    intake = app.intake()
    rcpts = tuple(a.lower() for a in args.recipient)
    status = EX_OK
    max_size = int(config.limits["max_message_size"])
    if stdin:
        from gateway.deliver import read_limited

        raw = read_limited(sys.stdin.buffer, max_size)
        if raw is None:  # the MTA bounces it to its sender, as SMTP's 552 and `deliver` do
            print(f"ticket-gateway: ingest: 5.3.4 message too large (over limits.max_message_size = {max_size} "
                  "bytes)", file=sys.stderr)
            if ahead is not None:
                ahead.close()
            app.close()
            return EX_DATAERR
        sources: Iterator[Source] = iter([Source("stdin", "stdin", raw, 1, len(raw))])
    else:
        sources = iter_sources(paths, max_size)
    progress = Progress(sys.stderr.isatty() and not args.json)
    counts: dict[str, int] = {}

    def report(ref: str, result, total: int | None) -> None:  # type: ignore[no-untyped-def]
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
        if args.json:
            d = result.as_dict()
            d["source"] = ref
            print(json.dumps(d, ensure_ascii=False))
        elif args.dry_run:
            print(f"{ref}: would be {result.outcome}"
                  + (f" on ticket #{result.ticket_number}" if result.ticket_number else "")
                  + (f": {result.reason}" if result.reason else ""))
            for line in result.trace:
                print(f"  {line}")
        elif not args.quiet and (total or 0) <= 1:
            print(f"mail {result.mail_id}: {result.outcome}"
                  + (f" #{result.ticket_number}" if result.ticket_number else "")
                  + (f" ({result.reason})" if result.reason else ""))

    # Files, Maildirs and mboxes stay where they are until we return: many mails go into one write
    # transaction (a savepoint each), and a mail is reported only once the commit holding it returned.
    # The MTA pipe (stdin) and dry runs take the one-mail path.
    if args.batch < 1:
        raise UsageError("ingest: --batch must be at least 1")
    batched = not stdin and not args.dry_run
    batch = None
    done: list[tuple[str, object, int | None]] = []

    def commit() -> None:
        nonlocal batch
        if batch is not None:
            b, batch = batch, None
            b.commit()
        for item in done:
            report(*item)
        done.clear()

    stream: Iterator[tuple[Source, object]]
    if ahead is not None and batched:
        stream = ahead.stream(sources)
    else:
        stream = ((item, None) for item in sources)

    def envelope(source: str, ref: str) -> Envelope:
        historic = source != "stdin"  # files, Maildirs, mboxes: old mail (see the module's text)
        return Envelope(mail_from=args.sender, rcpt_tos=rcpts, source=source,
                        source_ref=None if source == "stdin" else ref, client_ip=args.client_ip or None,
                        client_helo=args.helo or None, historic=historic, quiet=historic and not args.notify)

    def refuse(ref: str, size: int) -> None:
        reason = f"too large: {size} bytes, over limits.max_message_size = {max_size}; not imported, left in place"
        counts["refused"] = counts.get("refused", 0) + 1
        if args.json:
            print(json.dumps({"mail_id": None, "outcome": "refused", "reason": reason, "ticket": None,
                              "comment_id": None, "trace": [], "source": ref}))
        print(f"ticket-gateway: ingest: {ref}: {reason}", file=sys.stderr)

    if not args.dry_run and app.disk.low():
        print(f"ticket-gateway: free space in {config.data_dir} is below limits.free_space_factor x "
              "limits.max_message_size: try again later", file=sys.stderr)
        if ahead is not None:
            ahead.close()
        app.close()
        return EX_TEMPFAIL

    try:
        for chunk in _chunks(stream, PREFETCH if ahead is not None else 1):
            for i, ((source, ref, raw, total, size), prepared) in enumerate(chunk):
                progress.step(total)
                if raw is None:
                    if size is not None:
                        refuse(ref, size)
                    else:
                        print(f"ticket-gateway: ingest: cannot read {ref}", file=sys.stderr)
                    status = status or EX_DATAERR
                    continue
                env = envelope(source, ref)
                if source == "stdin" and app.auth.active:  # sender authentication on arrival (gateway.auth)
                    env = app.auth.envelope(raw, env)
                try:
                    if batched:
                        if batch is None:
                            if app.disk.low():  # the data directory filled up during the import
                                print(f"ticket-gateway: free space in {config.data_dir} is low: stopped before "
                                      f"{ref}; try again later", file=sys.stderr)
                                return EX_TEMPFAIL
                            batch = intake.batch()
                        if ahead is not None and (i == 0 or batch.count == 0):
                            # the lookups of this mail and the rest of its chunk, made for all of them at once
                            batch.prefetch([(envelope(it[0], it[1]), prep) for it, prep in chunk[i:]
                                            if it[2] is not None])
                        done.append((ref, batch.ingest(raw, env, prepared), total))
                        if batch.count >= args.batch or batch.size >= BATCH_BYTES or batch.age() >= BATCH_SECONDS:
                            commit()
                        continue
                    result = intake.ingest(raw, env, dry_run=args.dry_run, durable_first=False)
                except StoreUnavailable as e:
                    n = len(done) + (0 if done and done[-1][0] == ref else 1)  # the mails of the rolled-back transaction
                    held = f" (nor the other {n - 1} mail(s) of its transaction)" if batched and n > 1 else ""
                    print(f"ticket-gateway: could not store {ref}{held}: {e}", file=sys.stderr)
                    return EX_TEMPFAIL
                report(ref, result, total)
        try:
            commit()
        except StoreUnavailable as e:
            print(f"ticket-gateway: could not store the last {len(done)} mail(s): {e}", file=sys.stderr)
            return EX_TEMPFAIL
    finally:
        if ahead is not None:
            ahead.close()
        if batch is not None:
            batch.close()  # not committed: nothing of it is stored, the sources are still there
        app.close()
    if not args.quiet and not args.json and sum(counts.values()) > 1:
        print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return status
