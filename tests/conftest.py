"""Shared fixtures: a fresh store on SQLite and on PostgreSQL, the corpus, mail builders.

PostgreSQL: TG_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres) must answer; the
README's test command installs and starts it when missing. Tests marked `pg` run on both databases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from dovecot import (  # noqa: E402,F401 -- a real IMAP server (tests/dovecot.py)
    dovecot,
    dovecot_server,
    dovecot_tls,
    dovecot_tls_server,
)

PG_ADMIN_URL = os.environ.get("TG_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def corpus_root() -> Path:
    return Path(os.environ.get("TG_CORPUS") or ROOT.parent / "shared" / "corpus")


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if not root.is_dir():
        pytest.fail(f"the shared corpus is missing at {root} (set TG_CORPUS)")
    return root


# Databases -----------------------------------------------------------------------------------------------
_pg_template: str | None = None


def _pg_admin():
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(PG_ADMIN_URL)
    return psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                           dbname=u.database or "postgres", autocommit=True, connect_timeout=5)


def _pg_url(dbname: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(PG_ADMIN_URL).set(database=dbname).render_as_string(hide_password=False)


def _pg_template_db() -> str:
    """One migrated template database per test run; each test gets a copy (fast)."""
    global _pg_template
    if _pg_template is None:
        from gateway.db import make_engine
        from gateway.migrate import upgrade

        name = f"tg_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        engine = make_engine(_pg_url(name))
        upgrade(engine)
        engine.dispose()
        _pg_template = name
    return _pg_template


def new_pg_database() -> str:
    tpl = _pg_template_db()
    name = f"tg_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    return name


def drop_pg_database(name: str) -> None:
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_sqlite_template: Path | None = None


def new_sqlite_database(path: Path) -> str:
    global _sqlite_template
    from gateway.db import make_engine
    from gateway.migrate import upgrade

    if _sqlite_template is None:
        import tempfile

        tpl = Path(tempfile.mkdtemp(prefix="tg-tpl-")) / "template.db"
        engine = make_engine(f"sqlite:///{tpl}")
        upgrade(engine)
        engine.dispose()  # closing the last connection checkpoints the WAL into the file
        _sqlite_template = tpl
    path.parent.mkdir(parents=True, exist_ok=True)
    assert not Path(str(_sqlite_template) + "-wal").exists() or Path(str(_sqlite_template) + "-wal").stat().st_size == 0
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


def pytest_sessionfinish(session, exitstatus):
    if _pg_template is not None:
        try:
            drop_pg_database(_pg_template)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, migrated database: the test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield new_sqlite_database(tmp_path / "var" / "gateway.db")
        return
    try:
        name = new_pg_database()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {e} (the README's test command starts it)")
    yield _pg_url(name)
    drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return new_sqlite_database(tmp_path / "var" / "gateway.db")


# Apps ----------------------------------------------------------------------------------------------------
FIXED_NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def make_config(tmp_path: Path, db_url: str, **sections):
    from gateway.config import validate

    data: dict[str, Any] = {"gateway": {"data_dir": str(tmp_path / "var"), "addresses": ["support@example.com"],
                        "unknown_senders": "register"},
            "database": {"url": db_url}}
    for name, values in sections.items():
        if isinstance(values, list):  # an array of tables ([[routes]], [[imap]], ...)
            data[name] = values
        else:
            data.setdefault(name, {}).update(values)
    return validate(data, base_dir=tmp_path)


class Clock:
    """A settable clock for tests."""

    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        from datetime import timedelta

        self.now = self.now + timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_app(tmp_path, db_url, clock):
    from gateway.app import build_app

    apps = []

    def factory(**sections):
        app = build_app(make_config(tmp_path, db_url, **sections), clock=clock)
        apps.append(app)
        return app

    yield factory
    for a in apps:
        a.close()


@pytest.fixture
def app(make_app):
    return make_app()


# The CLI as a subprocess ------------------------------------------------------------------------------------
def run_cli(*args: str, config: Path | None = None, input: bytes | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    e = dict(os.environ)
    e.pop("TICKET_GATEWAY_CONFIG", None)
    if env:
        e.update(env)
    cmd = [sys.executable, "-m", "gateway"] + (["--config", str(config)] if config else []) + list(args)
    return subprocess.run(cmd, input=input, capture_output=True, env=e, timeout=timeout)


def write_config(tmp_path: Path, db_url: str, extra: str = "", unknown: str = "register") -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f'''[gateway]
data_dir = "{tmp_path / 'var'}"
addresses = ["support@example.com"]
unknown_senders = "{unknown}"

[database]
url = "{db_url}"
''' + extra)
    return p
