"""Engine and sessions.

SQLite (the embedded default) runs in WAL mode with a busy timeout and `synchronous=FULL` (a committed mail
survives a power cut), and every transaction starts with `BEGIN IMMEDIATE`: a deferred BEGIN that reads and
then writes fails under concurrent writers instead of waiting. PostgreSQL runs through psycopg 3. The app's
sessions and the tricks that speed up the pipeline's database work are the store's (gateway.store.sql).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database cannot be reached or written: the caller must answer 'try again later'."""


def make_engine(url: str, *, busy_timeout_ms: int = 30000, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine  # its savepoints: gateway.store.sql.direct_savepoints
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         connect_args={"connect_timeout": 10} if "psycopg" in url else {})


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean 'the store is down or full', not 'this mail is bad'."""
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, sqlite3.OperationalError):  # raised by the driver directly (gateway.store.sql.direct_savepoints)
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return True
    return False


def retry_on_conflict(fn: Callable[[], T], *, attempts: int = 5) -> T:
    """Run a write transaction again when a concurrent writer won a unique-constraint race
    or PostgreSQL reported a serialization failure/deadlock."""
    for i in range(attempts):
        try:
            return fn()
        except IntegrityError:
            if i == attempts - 1:
                raise
        except OperationalError as e:
            if not is_conflict(e) or i == attempts - 1:
                raise
        time.sleep(0.01 * (i + 1))
    raise AssertionError("unreachable")


def is_conflict(exc: BaseException) -> bool:
    """PostgreSQL ended the transaction for a concurrent one (a deadlock, a serialization failure): running it
    again succeeds; the store is not unavailable."""
    return isinstance(exc, OperationalError) and getattr(getattr(exc, "orig", None), "sqlstate", None) in (
        "40001", "40P01")


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One write transaction: commit on success, roll back on any exception."""
    with factory() as session:
        with session.begin():
            yield session


def insert_ignoring_duplicates(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING (SQLite and PostgreSQL): rows that would break a unique constraint are
    left out, in one statement, with no lookup first and no error that aborts the transaction."""
    dialect = session.get_bind().dialect.name
    stmt = _INSERT_IGNORING.get((dialect, table))
    if stmt is None:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table).on_conflict_do_nothing()
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table).on_conflict_do_nothing()
        else:  # pragma: no cover -- only the two supported databases run the gateway
            raise NotImplementedError(dialect)
        _INSERT_IGNORING[(dialect, table)] = stmt
    session.connection().execute(stmt, rows)


_INSERT_IGNORING: dict[tuple[str, Any], Any] = {}  # built once per dialect and table (immutable statements)

