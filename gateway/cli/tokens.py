"""`ticket-gateway tokens create|list|revoke`: Bearer tokens of the HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    p = sub.add_parser("tokens", help="HTTP API tokens: create (the secret is shown once), list, revoke")
    tsub = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    cr = tsub.add_parser("create", help="create a token and print its secret (once: it is stored hashed)")
    cr.add_argument("name", help="what it is for, e.g. ansible or monitoring")
    cr.add_argument("--scope", default="read", choices=("read", "write", "admin"),
                    help="read: every GET; write: also tickets and comments; admin: everything (default read)")
    cr.add_argument("--json", action="store_true")
    cr.set_defaults(func=create)
    ls = tsub.add_parser("list", help="tokens (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_tokens)
    rv = tsub.add_parser("revoke", help="revoke a token: refused from now on")
    rv.add_argument("name")
    rv.set_defaults(func=revoke)


def create(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.tokens import create_token

    app = open_app(config, upgrade=True)
    try:
        view, secret = create_token(app, args.name, args.scope)
    finally:
        app.close()
    if args.json:
        print(json.dumps({"token": view, "secret": secret}))
        return 0
    print(secret)
    print(f"token {view['name']!r} ({view['scope']}): the line above is its secret, shown this once; send it as "
          f"'Authorization: Bearer <secret>'", file=sys.stderr)
    return 0


def list_tokens(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.pages import MAX_LIMIT
    from gateway.ops.tokens import list_tokens as list_op

    app = open_app(config, upgrade=True)
    rows: list[dict[str, Any]] = []
    cursor = None
    try:
        while True:
            page = list_op(app, limit=MAX_LIMIT, cursor=cursor)
            rows += page.items
            cursor = page.next_cursor
            if not cursor:
                break
    finally:
        app.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    for r in rows:
        state = "active" if r["active"] else f"revoked {r['revoked_at'][:19]}"
        print(f"{r['name']:<24} {r['scope']:<6} {r['prefix']}...  created {r['created_at'][:19]}  last used "
              f"{(r['last_used_at'] or '-')[:19]}  {state}")
    if not rows:
        print("no tokens (create one: ticket-gateway tokens create NAME --scope read|write|admin)")
    return 0


def revoke(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.tokens import revoke_token

    app = open_app(config, upgrade=True)
    try:
        revoke_token(app, args.name)
    finally:
        app.close()
    print(f"token {args.name!r} revoked")
    return 0
