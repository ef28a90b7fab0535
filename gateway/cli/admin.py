"""`ticket-gateway check-config`, `db upgrade` and `db backup`."""

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
    bk = dsub.add_parser("backup", help="copy the SQLite database while the gateway runs (PostgreSQL: pg_dump)")
    bk.add_argument("file", metavar="FILE", help="the copy to write (not overwritten unless --force)")
    bk.add_argument("--force", action="store_true", help="replace FILE if it exists")
    bk.set_defaults(func=db_backup)
    pr = dsub.add_parser("prune-attachments", help="remove attachment blobs nothing refers to (older than "
                                                   "[attachments] prune_grace_hours)")
    pr.add_argument("--limit", type=int, default=1_000_000, metavar="N",
                    help="look at no more than N blobs (default 1000000; the whole store is looked at once at most)")
    pr.set_defaults(func=db_prune_attachments)


def check_config(args: argparse.Namespace, config: Config) -> int:
    """Every problem at once (the schema's, the files', the components'), else a summary of what will run."""
    if args.example:
        from gateway.config import example_toml

        sys.stdout.write(example_toml())
        return 0
    from gateway.checks import problems, summary
    from gateway.exitcodes import EX_CONFIG

    errors, warnings = problems(config)
    for e in errors:
        print(f"ticket-gateway: configuration error: {e}", file=sys.stderr)
    for w in warnings:
        print(f"ticket-gateway: warning: {w}", file=sys.stderr)
    if errors:
        return EX_CONFIG
    print(f"config: {config.source}: OK")
    for what, how in summary(config):
        print(f"{what}: {how}")
    return 0


def _redact(url: str) -> str:
    from gateway.checks import redact

    return redact(url)


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


def db_prune_attachments(args: argparse.Namespace, config: Config) -> int:
    """What serve's job `attachments-prune` does, over the whole store (bounded by --limit)."""
    from gateway.app import build_app
    from gateway.blobprune import Pruner
    from gateway.exitcodes import EX_USAGE

    if args.limit < 1:
        print("ticket-gateway: --limit must be at least 1", file=sys.stderr)
        return EX_USAGE
    app = build_app(config)
    try:
        done = Pruner(app.sessions, app.blobs, config.values["attachments"]["prune_grace_hours"] * 3600.0).run(
            args.limit)
    finally:
        app.close()
    print(f"{done.removed} orphaned blob(s) removed; {done.looked} looked at ({done.referenced} in use, "
          f"{done.recent} written within the last {config.values['attachments']['prune_grace_hours']} hours)")
    return 0


def db_backup(args: argparse.Namespace, config: Config) -> int:
    """An online copy with SQLite's backup API: consistent (one snapshot, whatever writers do meanwhile),
    written next to FILE and renamed into place when complete and checked."""
    import os
    import sqlite3
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from gateway.exitcodes import EX_NOINPUT, EX_USAGE

    url = make_url(config.database_url)
    if not url.drivername.startswith("sqlite"):
        print(f"ticket-gateway: db backup copies SQLite databases; this one is {url.get_backend_name()}. Use "
              f"its own tools, e.g.: pg_dump --format=custom --file={args.file} "
              f"'{_redact(config.database_url).replace('+psycopg', '')}' (restore: pg_restore)", file=sys.stderr)
        return EX_USAGE
    source = Path(url.database or "")
    if not source.is_file():
        print(f"ticket-gateway: no database at {source}", file=sys.stderr)
        return EX_NOINPUT
    target = Path(args.file)
    if target.exists() and not args.force:
        print(f"ticket-gateway: {target} exists (--force replaces it)", file=sys.stderr)
        return EX_USAGE
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    busy_ms = int(config.get("database", "busy_timeout_ms"))
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_ms / 1000)
    try:
        dst = sqlite3.connect(partial)
        try:
            # a few pages at a time: the gateway's writers are held up for one step, never for the whole copy
            src.backup(dst, pages=1024, sleep=0.01)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            tickets = dst.execute("SELECT count(*) FROM tickets").fetchone()[0]
        finally:
            dst.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    if check != "ok":
        partial.unlink(missing_ok=True)
        print(f"ticket-gateway: the copy failed its integrity check: {check}", file=sys.stderr)
        return 74  # EX_IOERR
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    print(f"backup: {source} -> {target} ({target.stat().st_size} bytes, {tickets} tickets). Keep "
          f"{config.attachments_dir} and {config.data_dir / 'reply-secret'} with it.")
    return 0
