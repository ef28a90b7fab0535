"""Schema upgrades through Alembic, run by `db upgrade` and on start of `serve`/`ingest`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic is imported only when a migration has to run: the common start-up (pipe mode) skips it.

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revisions() -> frozenset[str]:
    """Every feature's migrations branch from 0001_core; the schema is current when all heads are applied."""
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(_alembic_config()).get_heads())


def current_revisions(engine: Engine) -> frozenset[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return frozenset(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: Engine) -> tuple[str, str]:
    """Bring the database to the newest schema; returns (before, after). Idempotent."""
    before = current_revisions(engine)
    heads = head_revisions()
    if before == heads:
        return ",".join(sorted(before)), ",".join(sorted(heads))
    from alembic import command

    cfg = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # several instances starting at once: one migrates, the others wait and find it done
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724274)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    return ",".join(sorted(before)) or "", ",".join(sorted(current_revisions(engine)))


def ensure_current(engine: Engine) -> None:
    """Fast path for every start: one query when the schema is already at HEAD; else upgrade."""
    from sqlalchemy import text

    from gateway.migrations import HEADS

    try:
        with engine.connect() as conn:
            versions = frozenset(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        if versions == HEADS:
            return
    except Exception:  # noqa: BLE001 -- no table yet (empty database): upgrade creates it
        pass
    upgrade(engine)
