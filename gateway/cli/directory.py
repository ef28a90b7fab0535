"""`ticket-gateway users add|set|list|show|remove|block|unblock` and `orgs add|set|list|remove` (the shared
operations of gateway.ops.directory, as the API's /api/v1/users and /api/v1/organisations)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.cli.base import UsageError

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    u = sub.add_parser("users", help="contacts: customers and staff")
    usub = u.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="add or update a contact")
    add.add_argument("email")
    add.add_argument("--name", default="")
    add.add_argument("--staff", action="store_true", help="a staff member (replies become staff comments)")
    add.add_argument("--organisation", metavar="ORG", help="organisation name (must exist: orgs add)")
    add.set_defaults(func=add_user)
    st = usub.add_parser("set", help="change a contact: staff or not, organisation, name")
    st.add_argument("email")
    st.add_argument("--staff", dest="staff", action="store_true", default=None, help="make them staff")
    st.add_argument("--no-staff", dest="staff", action="store_false", help="make them a customer")
    st.add_argument("--organisation", metavar="ORG", help="organisation name (must exist); 'none' clears it")
    st.add_argument("--name")
    st.set_defaults(func=set_user)
    bl = usub.add_parser("block", help="block a contact: every mail from it is quarantined with the reason")
    bl.add_argument("email")
    bl.add_argument("--reason", help="why (shown with the quarantined mail)")
    bl.set_defaults(func=block_user, blocked=True)
    ub = usub.add_parser("unblock", help="let a blocked contact's mail through again")
    ub.add_argument("email")
    ub.set_defaults(func=block_user, blocked=False, reason=None)
    ls = usub.add_parser("list", help="list contacts")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_users)
    sh = usub.add_parser("show", help="one contact")
    sh.add_argument("email")
    sh.set_defaults(func=show_user)
    rm = usub.add_parser("remove", help="remove a contact that no ticket or comment refers to")
    rm.add_argument("email")
    rm.set_defaults(func=remove_user)
    o = sub.add_parser("orgs", help="organisations and their mail domains")
    osub = o.add_subparsers(dest="orgs_command", metavar="ACTION", required=True)
    oadd = osub.add_parser("add", help="add an organisation (or domains to one)")
    oadd.add_argument("name")
    oadd.add_argument("--domain", action="append", default=[], help="mail domain; repeatable")
    oadd.add_argument("--visibility", metavar="VISIBILITY", help="reporter-only (the default): a ticket's "
                      "participants are its reporter and watchers; organisation: every member of it too")
    oadd.set_defaults(func=add_org, replace=False, mode="upsert")
    oset = osub.add_parser("set", help="change an organisation: its visibility, its domains")
    oset.add_argument("name")
    oset.add_argument("--domain", action="append", default=[], help="its mail domains become these; repeatable")
    oset.add_argument("--visibility", metavar="VISIBILITY", help="reporter-only or organisation")
    oset.set_defaults(func=add_org, replace=True, mode="update")
    ols = osub.add_parser("list", help="list organisations")
    ols.add_argument("--json", action="store_true")
    ols.set_defaults(func=list_orgs)
    orm = osub.add_parser("remove", help="remove an organisation without contacts or tickets")
    orm.add_argument("name")
    orm.set_defaults(func=remove_org)


def _all(app: Any, op: Callable[..., Any], **kw: Any) -> list[dict[str, Any]]:
    from gateway.ops.pages import MAX_LIMIT

    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = op(app, limit=MAX_LIMIT, cursor=cursor, **kw)
        rows += page.items
        cursor = page.next_cursor
        if not cursor:
            return rows


def add_user(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import save_user

    if args.email.count("@") != 1 or any(c.isspace() for c in args.email):
        raise UsageError(f"not an email address: {args.email!r}")
    app = open_app(config, upgrade=True)
    try:
        c, _ = save_user(app, args.email, name=args.name or None, role="staff" if args.staff else None,
                         organisation=args.organisation or None)
    finally:
        app.close()
    print(f"{c['email']}: {c['role']}" + (f", {c['organisation']}" if c["organisation"] and args.organisation else ""))
    return 0


def set_user(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import save_user

    if args.staff is None and args.organisation is None and args.name is None:
        raise UsageError("nothing to change (--staff, --no-staff, --organisation, --name)")
    role = None if args.staff is None else "staff" if args.staff else "customer"
    org = None if args.organisation is None else "" if args.organisation.lower() in ("", "none") else args.organisation
    app = open_app(config, upgrade=True)
    try:
        c, _ = save_user(app, args.email, name=args.name, role=role, organisation=org, mode="update")
    finally:
        app.close()
    print(f"{c['email']}: {c['role']}" + (f", {c['organisation']}" if c["organisation"] else "")
          + (f", {c['name']}" if c["name"] else ""))
    return 0


def block_user(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import block_user as block_op

    app = open_app(config, upgrade=True)
    try:
        c = block_op(app, args.email, blocked=args.blocked, reason=args.reason)
    finally:
        app.close()
    print(f"{c['email']}: blocked ({c['blocked_reason']})" if c["blocked"] else f"{c['email']}: not blocked")
    return 0


def list_users(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import list_users as list_op

    app = open_app(config, upgrade=True)
    try:
        rows = _all(app, list_op)
    finally:
        app.close()
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
    elif not rows:
        print("no contacts")
    else:
        from gateway.cli.table import print_table

        print_table(("email", "role", "organisation", "name", "auto-registered", "undeliverable", "blocked"),
                    ((r["email"], r["role"], r["organisation"], r["name"], r["auto_registered"], r["undeliverable"],
                      r["blocked"]) for r in rows), caps={"email": 50, "organisation": 40, "name": 40})
    return 0


def show_user(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import get_user

    app = open_app(config, upgrade=True)
    try:
        print(json.dumps(get_user(app, args.email), ensure_ascii=False, indent=1))
    finally:
        app.close()
    return 0


def remove_user(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import remove_user as remove_op

    app = open_app(config, upgrade=True)
    try:
        remove_op(app, args.email)
    finally:
        app.close()
    print(f"{args.email}: removed")
    return 0


def add_org(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import save_org

    if args.mode == "update" and not args.domain and args.visibility is None:
        raise UsageError("nothing to change (--visibility, --domain)")
    app = open_app(config, upgrade=True)
    try:
        org, _ = save_org(app, args.name, domains=args.domain, replace_domains=args.replace and bool(args.domain),
                          visibility=args.visibility, mode=args.mode)
    finally:
        app.close()
    print(f"{org['name']}: {', '.join(org['domains']) or '(no domains)'}; visibility {org['visibility']}")
    return 0


def list_orgs(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import list_orgs as list_op

    app = open_app(config, upgrade=True)
    try:
        rows = _all(app, list_op)
    finally:
        app.close()
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
    elif not rows:
        print("no organisations")
    else:
        from gateway.cli.table import print_table

        print_table(("name", "visibility", "domains"), ((r["name"], r["visibility"], ", ".join(r["domains"]))
                                                         for r in rows), caps={"name": 50})
    return 0


def remove_org(args: argparse.Namespace, config: Config) -> int:
    from gateway.cli.base import open_app
    from gateway.ops.directory import remove_org as remove_op

    app = open_app(config, upgrade=True)
    try:
        remove_op(app, args.name)
    finally:
        app.close()
    print(f"{args.name}: removed")
    return 0
