"""`ticket-gateway deliver`: the MTA pipe transport, one process per mail, fast.

    deliver [--config FILE] [--sender ADDR] [--recipient ADDR ...] < mail

Exit 0 once the mail is durable in the spool (gateway.spool); the drainer (the running service, else a
detached `ticket-gateway spool drain`) makes it a ticket or comment. Exit codes are the sysexits an MTA
understands: 75 (try again later) when it cannot be spooled, 67 for a recipient that is not a gateway address
(as the LMTP listener's 550), 65 for a mail over `limits.max_message_size` (as SMTP's 552), 64 usage, 78
configuration.

Imports only the standard library, gateway.config, gateway.spool and gateway.exitcodes: the database layer is
for the drainer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

from gateway import spool
from gateway.exitcodes import EX_CONFIG, EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ticket-gateway deliver",
                                description="MTA pipe: spool one mail from stdin durably, exit 0.")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: $TICKET_GATEWAY_CONFIG)")
    p.add_argument("--sender", metavar="ADDR", help="envelope sender (Postfix: ${sender})")
    p.add_argument("--recipient", metavar="ADDR", action="append", default=[],
                   help="envelope recipient (Postfix: ${original_recipient}); repeatable")
    p.add_argument("--client-ip", metavar="IP", help="the SMTP client's address, for SPF (Postfix: ${client_address})")
    p.add_argument("--helo", metavar="NAME", help="the SMTP client's HELO name, for SPF (Postfix: ${client_helo})")
    p.add_argument("-q", "--quiet", action="store_true", help="accepted for symmetry with ingest; prints nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="accepted as everywhere; prints nothing more")
    return p


def _say(text: str) -> None:
    sys.stderr.write(f"ticket-gateway deliver: {text}\n")


def read_limited(stream: BinaryIO, limit: int) -> bytes | None:
    """The whole of stdin, or None when it is longer than `limit` bytes (read no further than that)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code not in (0, None) else EX_OK
    from gateway.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as e:
        _say(f"configuration error: {e}")
        return EX_CONFIG
    strangers = [r for r in args.recipient if not config.is_gateway_address(r)]
    if strangers:
        _say(f"<{strangers[0]}>: not a gateway address (gateway.addresses)")
        return EX_NOUSER
    if _disk_low(config):
        _say(f"free space in {config.data_dir} is below limits.free_space_factor x limits.max_message_size; "
             "try again later")
        return EX_TEMPFAIL
    limit = int(config.values["limits"]["max_message_size"])
    raw = read_limited(stdin or sys.stdin.buffer, limit)
    if raw is None:
        _say(f"message too large (over limits.max_message_size = {limit} bytes)")
        return EX_DATAERR
    where = spool.spool_dir(config.data_dir)
    envelope = {"mail_from": args.sender, "rcpt_tos": list(args.recipient), "source": "pipe",
                "client_ip": args.client_ip or None, "client_helo": args.helo or None}
    try:
        spool.write(where, raw, envelope)
    except spool.SpoolError as e:
        _say(f"{e}; try again later")
        return EX_TEMPFAIL
    kick(where, args.config)
    return EX_OK


def _disk_low(config: Any) -> bool:
    from gateway.guard.diskspace import DiskGuard

    return DiskGuard.for_config(config).low()


def _self_command() -> list[str]:
    """How this process was started: the console script (or a wrapper an admin wrote) when argv[0] is an
    executable file, so that the drainer finds the same installation; else the interpreter with -m gateway."""
    prog = sys.argv[0] if sys.argv else ""
    if prog and os.path.isabs(prog) and os.access(prog, os.X_OK) and not prog.endswith((".py", "__main__.py")):
        return [prog]
    return [sys.executable, "-m", "gateway"]


def kick(where: os.PathLike[str] | str, config_path: str | None) -> None:
    """Make sure somebody drains: ring a running service, else start a drainer. Never fails the delivery
    (the mail is durable; the next delivery, `spool drain` or `serve` drains it)."""
    from pathlib import Path

    path = Path(where)
    try:
        if spool.DrainLock(path).held_elsewhere():
            spool.ring(path)
            return
        argv = _self_command() + (["--config", os.path.abspath(config_path)] if config_path else [])
        spool.spawn_detached(argv + ["spool", "drain"])
    except OSError as e:
        _say(f"spooled, but could not start a drainer ({e}); `ticket-gateway spool drain` or `serve` will")
