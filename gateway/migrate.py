"""Schema upgrades through Alembic, run by `db upgrade` and on start of `serve`/`ingest`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the newest schema; returns (before, after). Idempotent."""
    before = current_revision(engine)
    head = head_revision()
    if before == head:
        return before, head
    cfg = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # several instances starting at once: one migrates, the others wait and find it done
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724274)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, current_revision(engine) or head


def ensure_current(engine: Engine) -> None:
    """Fast path for every start: one query when the schema is already at HEAD; else upgrade."""
    from sqlalchemy import text

    from gateway.migrations import HEAD

    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if version == HEAD:
            return
    except Exception:  # noqa: BLE001 -- no table yet (empty database): upgrade creates it
        pass
    upgrade(engine)
