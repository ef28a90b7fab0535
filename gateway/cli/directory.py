"""`ticket-gateway users add|list` and `orgs add|list`."""

from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    u = sub.add_parser("users", help="contacts: customers and staff")
    usub = u.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="add or update a contact")
    add.add_argument("email")
    add.add_argument("--name", default="")
    add.add_argument("--staff", action="store_true", help="a staff member (replies become staff comments)")
    add.add_argument("--organisation", metavar="ORG", help="organisation name (must exist: orgs add)")
    add.set_defaults(func=add_user)
    ls = usub.add_parser("list", help="list contacts")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_users)
    o = sub.add_parser("orgs", help="organisations and their mail domains")
    osub = o.add_subparsers(dest="orgs_command", metavar="ACTION", required=True)
    oadd = osub.add_parser("add", help="add an organisation (or domains to one)")
    oadd.add_argument("name")
    oadd.add_argument("--domain", action="append", default=[], help="mail domain; repeatable")
    oadd.set_defaults(func=add_org)
    ols = osub.add_parser("list", help="list organisations")
    ols.add_argument("--json", action="store_true")
    ols.set_defaults(func=list_orgs)


def add_user(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import open_app
    from gateway.db import transaction
    from gateway.tickets import Directory

    if args.email.count("@") != 1 or any(c.isspace() for c in args.email):
        raise UsageError(f"not an email address: {args.email!r}")
    app = open_app(config, upgrade=True)
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        org = None
        if args.organisation:
            org = d.organisation(args.organisation)
            if org is None:
                raise UsageError(f"no organisation {args.organisation!r} (add it with: orgs add)")
        c = d.add_contact(args.email, name=args.name, staff=args.staff, organisation=org)
        if c.vouched is None:  # an admin added it: the gateway may mail it (gateway.guard.relay)
            from gateway.guard.relay import ADMIN

            c.vouched = ADMIN
        print(f"{c.email}: {c.role}" + (f", {org.name}" if c.organisation_id and org is not None else ""))
    return 0


def list_users(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.cli import open_app
    from gateway.models import Contact

    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        rows = [{"email": c.email, "name": c.name, "role": c.role,
                 "organisation": c.organisation.name if c.organisation else None,
                 "auto_registered": c.auto_registered, "undeliverable": c.undeliverable}
                for c in s.scalars(select(Contact).order_by(Contact.email))]
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
    elif not rows:
        print("no contacts")
    else:
        from gateway.cli.table import print_table

        print_table(("email", "role", "organisation", "name", "auto-registered", "undeliverable"),
                    ((r["email"], r["role"], r["organisation"], r["name"], r["auto_registered"], r["undeliverable"])
                     for r in rows), caps={"email": 50, "organisation": 40, "name": 40})
    return 0


def add_org(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from gateway.cli import open_app
    from gateway.db import transaction
    from gateway.tickets import Directory

    app = open_app(config, upgrade=True)
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        for dom in args.domain:
            other = d.organisation_for_domain(dom.lower().lstrip("@"))
            if other is not None and other.name != args.name:
                raise UsageError(f"domain {dom} already belongs to {other.name}")
        org = d.add_organisation(args.name, args.domain)
        print(f"{org.name}: {', '.join(x.domain for x in org.domains) or '(no domains)'}")
    return 0


def list_orgs(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.cli import open_app
    from gateway.models import Organisation

    app = open_app(config, upgrade=True)
    with app.sessions() as s:
        rows = [{"name": o.name, "domains": [d.domain for d in o.domains]}
                for o in s.scalars(select(Organisation).order_by(Organisation.name))]
    if args.json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
        print()
    elif not rows:
        print("no organisations")
    else:
        from gateway.cli.table import print_table

        print_table(("name", "domains"), ((r["name"], ", ".join(r["domains"])) for r in rows), caps={"name": 50})
    return 0
