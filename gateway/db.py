"""Engine and sessions.

SQLite (the embedded default) runs in WAL mode with a busy timeout and `synchronous=FULL` (a committed mail
survives a power cut), and every transaction starts with `BEGIN IMMEDIATE`: a deferred BEGIN that reads and
then writes fails under concurrent writers instead of waiting. PostgreSQL runs through psycopg 3.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import MANYTOONE, Session, make_transient_to_detached, sessionmaker

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

        _direct_savepoints(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         connect_args={"connect_timeout": 10} if "psycopg" in url else {})


def _direct_savepoints(engine: Engine) -> None:
    """SAVEPOINT, RELEASE and ROLLBACK TO on the driver's connection, not through a statement execution: the
    same three SQL commands, without SQLAlchemy's execution machinery around each (it cost more than the
    savepoint itself: a batch import takes one savepoint per mail). SQLAlchemy's savepoint bookkeeping
    (Connection.begin_nested, the session's) is unchanged: only the dialect's hooks that send the command are."""
    def savepoint(conn: Connection, name: str) -> None:
        conn.connection.driver_connection.execute(f"SAVEPOINT {name}")  # type: ignore[union-attr]

    def release(conn: Connection, name: str) -> None:
        conn.connection.driver_connection.execute(f"RELEASE SAVEPOINT {name}")  # type: ignore[union-attr]

    def rollback_to(conn: Connection, name: str) -> None:
        conn.connection.driver_connection.execute(f"ROLLBACK TO SAVEPOINT {name}")  # type: ignore[union-attr]

    engine.dialect.do_savepoint = savepoint  # type: ignore[method-assign,assignment]
    engine.dialect.do_release_savepoint = release  # type: ignore[method-assign,assignment]
    engine.dialect.do_rollback_to_savepoint = rollback_to  # type: ignore[method-assign,assignment]


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    # a rollback (a savepoint's too) may undo what a memo remembers: drop them all
    event.listen(factory, "after_soft_rollback", lambda session, _previous: session.info.pop(_MEMO, None))
    event.listen(factory, "after_soft_rollback", _expunge_rolled_back)
    event.listen(factory, "after_commit", lambda session: session.info.pop(_ATTACHED, None))
    return factory


_ATTACHED = "tg.attached"


def insert_row(session: Session, obj: Any) -> None:
    """Write a new object's row with one plain INSERT, the object left outside the session. For a new row
    whose many-to-one relationships point at persistent objects (or none): the foreign keys are taken from
    them, every column not given gets its default on the object too, and a key the database assigns is set
    on it."""
    mapper = sa_inspect(type(obj))
    state = sa_inspect(obj)
    assert state.transient, "insert_row takes a new object, not yet in a session"
    for rel in mapper.relationships:  # many-to-one: the foreign key columns from the related object
        if rel.direction is MANYTOONE and rel.key in state.dict:
            other = state.dict[rel.key]
            assert other is None or sa_inspect(other).persistent, f"{rel.key}: the related object is not written yet"
            for local, remote in rel.local_remote_pairs:
                value = None if other is None else getattr(other, rel.mapper.get_property_by_column(remote).key)
                setattr(obj, mapper.get_property_by_column(local).key, value)
    values: dict[str, Any] = {}
    assigned = []  # primary key attributes the database assigns
    for attr in mapper.column_attrs:
        col = attr.columns[0]
        if attr.key not in state.dict:
            if col.primary_key:
                assigned.append(attr.key)
                continue
            d = col.default
            setattr(obj, attr.key, None if d is None else (d.arg(None) if d.is_callable else d.arg))
        values[col.key] = state.dict[attr.key]
    pk = session.connection().execute(insert(mapper.local_table), values).inserted_primary_key
    if assigned:
        assert pk is not None
        for key in assigned:
            setattr(obj, key, pk[0])


def insert_attached(session: Session, obj: Any) -> None:
    """`insert_row`, then the object joins the session as persistent, as a flush would leave it (the unit of
    work's bookkeeping for one row costs several times the INSERT). Its later changes are flushed as usual.
    When a transaction it was written in rolls back (a savepoint's too), it leaves the session, as a flushed
    object would (`_expunge_rolled_back`)."""
    insert_row(session, obj)
    make_transient_to_detached(obj)
    session.add(obj)
    tx = session.get_nested_transaction() or session.get_transaction()
    chain = []
    while tx is not None:
        chain.append(tx)
        tx = tx.parent
    session.info.setdefault(_ATTACHED, []).append((obj, chain))


def _expunge_rolled_back(session: Session, previous: Any) -> None:
    attached = session.info.get(_ATTACHED)
    if not attached:
        return
    keep = []
    for obj, chain in attached:
        if any(tx is previous for tx in chain):
            if obj in session:
                session.expunge(obj)
        else:
            keep.append((obj, chain))
    session.info[_ATTACHED] = keep


_MEMO = "tg.memo"


def write_locked_memo(session: Session, key: str) -> dict[Any, Any] | None:
    """A memo for the current transaction, for values only this transaction can change: on SQLite, where every
    write transaction holds the write lock (BEGIN IMMEDIATE), so no other writer changes anything meanwhile.
    None elsewhere (PostgreSQL: another instance may write at any time; ask the database every time). Dropped
    on every rollback, a savepoint's included, and at the end of the transaction; whoever writes what a memo
    remembers updates or drops it (`drop_memo`)."""
    if session.get_bind().dialect.name != "sqlite" or not session.in_transaction():
        return None
    root = session.get_transaction()
    held: tuple[Any, dict[str, dict[Any, Any]]] | None = session.info.get(_MEMO)
    if held is None or held[0] is not root:
        held = session.info[_MEMO] = (root, {})
    return held[1].setdefault(key, {})


def drop_memo(session: Session, key: str) -> None:
    held = session.info.get(_MEMO)
    if held is not None:
        held[1].pop(key, None)


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean 'the store is down or full', not 'this mail is bad'."""
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, sqlite3.OperationalError):  # raised by the driver directly (_direct_savepoints)
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
            code = getattr(getattr(e, "orig", None), "sqlstate", None)
            if code not in ("40001", "40P01") or i == attempts - 1:
                raise
        time.sleep(0.01 * (i + 1))
    raise AssertionError("unreachable")


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

