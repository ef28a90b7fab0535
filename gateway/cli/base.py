"""What the command modules share: the usage error, opening the App, and the types of a command module's
hooks (`register(sub: Subparsers)`, commands `(args, config) -> exit status`). Light on purpose: the MTA
pipe's `ingest` imports it before anything else."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.config import Config

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Command: TypeAlias = Callable[[argparse.Namespace, Config], int]


class UsageError(Exception):
    """A wrong command line: the message is printed, the exit status is 64 (EX_USAGE)."""


class NotFound(Exception):
    """What the command names does not exist (no ticket #99, no mail 7): exit 66, not a usage error."""


def open_app(config: Config, *, upgrade: bool = False) -> App:
    """Build the App; with upgrade=True bring the schema up to date first (serve, ingest)."""
    from gateway.app import build_app

    app = build_app(config)
    if upgrade:
        from gateway.migrate import ensure_current

        ensure_current(app.engine)
    return app


def parse_instant(text: str, what: str = "--now") -> datetime:
    """ISO-8601; without a zone offset the time is UTC."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{what}: not an ISO-8601 time: {text!r} (e.g. 2026-11-02T09:30:00Z)") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
