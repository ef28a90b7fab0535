"""`ticket-gateway serve`: the long-running service (SMTP/LMTP listeners, pollers, periodic jobs).

Exit 0 after SIGTERM/SIGINT, 75 when the store is unreachable at start (systemd restarts the unit), 78 on
a configuration error, 71 when a listener cannot bind.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the service: SMTP/LMTP listeners, pollers, periodic jobs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, config: Config) -> int:
    from gateway.service import serve

    return serve(config, verbose=bool(getattr(args, "verbose", False)))
