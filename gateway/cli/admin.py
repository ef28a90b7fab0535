"""`ticket-gateway check-config` and `db upgrade`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.cli.base import Subparsers
    from gateway.config import Config


def register(sub: Subparsers) -> None:
    c = sub.add_parser("check-config", help="validate the configuration and show where things go")
    c.add_argument("--example", action="store_true", help="print the documented example config (all keys)")
    c.set_defaults(func=check_config)
    d = sub.add_parser("db", help="database maintenance")
    dsub = d.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dsub.add_parser("upgrade", help="create or upgrade the schema to the newest version")
    up.set_defaults(func=db_upgrade)


def check_config(args: argparse.Namespace, config: Config) -> int:
    if args.example:
        from gateway.config import example_toml

        sys.stdout.write(example_toml())
        return 0
    from gateway.config import ConfigError
    from gateway.exitcodes import EX_CONFIG
    from gateway.outbound import check_templates
    from gateway.sla import template_samples as sla_samples

    try:  # every notification template (and the SLA mails') renders with sample data (StrictUndefined)
        check_templates(config, extra=sla_samples(config))
    except ConfigError as e:
        print(f"ticket-gateway: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    print(f"config: {config.source}: OK")
    print(f"database: {_redact(config.database_url)}")
    print(f"attachments: {config.attachments_dir}")
    print(f"addresses: {', '.join(config.gateway_addresses)}")
    print(f"unknown senders: {config.gateway['unknown_senders']}")
    print("templates: OK" if config.outbound["enabled"] else "templates: outbound mail disabled")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def db_upgrade(args: argparse.Namespace, config: Config) -> int:
    from gateway.db import is_unavailable, make_engine
    from gateway.exitcodes import EX_TEMPFAIL
    from gateway.migrate import upgrade

    engine = make_engine(config.database_url)
    try:
        before, after = upgrade(engine)
    except Exception as e:  # noqa: BLE001
        if is_unavailable(e):
            print(f"ticket-gateway: database unavailable: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        raise
    finally:
        engine.dispose()
    print(f"database {_redact(config.database_url)}: {before or 'empty'} -> {after}")
    return 0
