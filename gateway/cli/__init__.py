"""The `ticket-gateway` command. Each command group is a module listed in COMMANDS (with `register(sub)`);
what they share is in gateway.cli.base, the exit statuses in gateway.exitcodes. Heavy imports happen inside
the commands so that the MTA pipe mode (`ingest` from stdin) starts fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from gateway.cli.base import NotFound, UsageError
from gateway.exitcodes import EX_CONFIG, EX_NOINPUT, EX_OK, EX_PIPE, EX_USAGE

# command modules, each with `register(subparsers)`; order = order in --help
COMMANDS: tuple[str, ...] = (
    "gateway.cli.ingest",
    "gateway.cli.tickets",
    "gateway.cli.sla",
    "gateway.cli.mail",
    "gateway.cli.directory",
    "gateway.cli.admin",
    "gateway.cli.outbox",
    "gateway.cli.tokens",
    "gateway.cli.backend",
    "gateway.cli.imap",
    "gateway.cli.serve",
    "gateway.cli.spool",
)


def _stdout_gone() -> None:
    """The reader of stdout went away (`ticket-gateway tickets list | head`): whatever is still buffered goes
    to /dev/null, so that neither the rest of the command nor the exit prints a BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticket-gateway", description="Email-to-ticket gateway.")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: $TICKET_GATEWAY_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def entry() -> None:
    """The console script and `python -m gateway`: `main`, then exit without tearing the interpreter down.
    Everything is written and closed by then (the commands close what they open; stdout, stderr and the log
    handlers are flushed here); freeing SQLAlchemy's thousands of objects one by one at exit would cost
    a process per mail (an MTA pipe transport) a tenth of its time and achieve nothing."""
    argv = sys.argv[1:]
    if _command_of(argv) == "deliver":  # the MTA pipe: no argparse tree, no database layer (gateway.deliver)
        from gateway.deliver import main as deliver

        i = argv.index("deliver")
        code = deliver(argv[:i] + argv[i + 1:])
    else:
        code = main()
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        _stdout_gone()
        code = code or EX_PIPE
    except Exception:  # noqa: BLE001 -- let the normal exit report it
        sys.exit(code)
    os._exit(code)


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word after the global options (--config FILE, -v), without building the parser."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            i += 2
        elif a.startswith("--config=") or a in ("-v", "--verbose"):
            i += 1
        else:
            return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors
        return EX_USAGE if e.code not in (0, None) else EX_OK
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EX_USAGE
    from gateway.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as e:
        for error in e.errors:  # every problem at once, one line each
            print(f"ticket-gateway: configuration error: {error}", file=sys.stderr)
        return EX_CONFIG
    level = "DEBUG" if args.verbose else config.get("logging", "level")
    from gateway.observe import formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(config.get("logging", "format")))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    from gateway.ops import errors as op

    try:
        return int(args.func(args, config) or 0)
    except (NotFound, op.NotFound) as e:  # no such ticket, mail, contact ...: not a usage error
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_NOINPUT
    except (UsageError, op.OpError) as e:  # OpError: a shared operation refused (gateway.ops)
        print(f"ticket-gateway: {e}", file=sys.stderr)
        return EX_USAGE
    except BrokenPipeError:
        _stdout_gone()
        return EX_PIPE
    except KeyboardInterrupt:
        return 130
