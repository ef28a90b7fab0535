"""The raw bytes of a large mail into and out of `inbound_raw` without extra copies of it in memory.

SQLite copies every value bound to a statement (SQLITE_TRANSIENT) and builds the row's record in memory too:
inserting a 25 MB mail the usual way costs two more copies of it, and reading it back a third one (the column
value, then Python's bytes). For a mail of BIG bytes or more on SQLite the row is inserted with a zeroblob of
its size and the bytes are written (and read) through SQLite's incremental blob I/O, a CHUNK at a time: only
the caller's own buffer is ever whole in memory. PostgreSQL (psycopg): the row goes in by a binary COPY, a CHUNK
at a time, and `copy_raw` reads it a slice at a time. Other databases take the plain statement.
Runs inside the caller's session and transaction. Also here, the other driver-level care a large mail needs:
`release_big_binds` (SQLite keeps a copy of every bound value) and `read_last_commit` (a read that does not
wait for the write lock).
"""

from __future__ import annotations

import os
import struct
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, insert, select

from gateway.models import InboundRaw, table_of

BIG = 1024 * 1024
CHUNK = 1024 * 1024
PIECE = 2 * 1024 * 1024  # bytes of a slice read by copy_raw on other databases (a compressed value is
# decompressed up to the slice's end for each: larger slices, fewer passes)


def _sqlite(session: Any) -> Any:
    """The session's sqlite3 connection, or None on another database."""
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        return None
    return conn.connection.driver_connection


def _postgresql(session: Any) -> Any:
    """The session's psycopg connection, or None on another database (or driver)."""
    conn = session.connection()
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        return None
    return conn.connection.driver_connection


def _rowid(db: Any, mail_id: int) -> int | None:
    row = db.execute("SELECT rowid FROM inbound_raw WHERE mail_id = ?", (mail_id,)).fetchone()
    return None if row is None else int(row[0])


def insert_raw(session: Any, mail_id: int, raw: bytes) -> None:
    """The raw bytes of mail `mail_id`: one INSERT (a large mail on SQLite: a zeroblob, then written in chunks)."""
    table = table_of(InboundRaw)
    db = _sqlite(session) if len(raw) >= BIG else None
    if db is None:
        pg = _postgresql(session) if len(raw) >= BIG else None
        if pg is not None:
            _copy_in(pg, mail_id, raw)
            return
        session.connection().execute(insert(table), [{"mail_id": mail_id, "data": raw}])
        return
    session.connection().execute(insert(table).values(mail_id=mail_id, data=func.zeroblob(len(raw))))
    rowid = _rowid(db, mail_id)
    assert rowid is not None
    view = memoryview(raw)
    with db.blobopen("inbound_raw", "data", rowid) as blob:
        for at in range(0, len(view), CHUNK):
            blob.write(view[at:at + CHUNK])


def _copy_in(pg: Any, mail_id: int, raw: bytes) -> None:
    """PostgreSQL: the row inserted by a binary COPY, its bytes sent a CHUNK at a time: a bound parameter would be
    another copy of them. The binary form: a header, one tuple of two fields (the mail id an int4, as
    inbound_raw.mail_id is; the bytes), the trailer."""
    view = memoryview(raw)
    with pg.cursor() as cur, cur.copy("COPY inbound_raw (mail_id, data) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!iihii", 0, 0, 2, 4, mail_id) + struct.pack("!i", len(raw)))
        for at in range(0, len(view), CHUNK):
            copy.write(view[at:at + CHUNK])
        copy.write(struct.pack("!h", -1))


def read_raw(session: Any, mail_id: int, limit: int | None = None) -> bytes | None:
    """The raw bytes of mail `mail_id` (one copy in memory), None when it has none; limit: its first `limit`
    bytes only."""
    db = _sqlite(session)
    if db is None:
        column = InboundRaw.data if limit is None else func.substr(InboundRaw.data, 1, limit)
        data = session.execute(select(column).where(InboundRaw.mail_id == mail_id)).scalar()
        return None if data is None else bytes(data)
    rowid = _rowid(db, mail_id)
    if rowid is None:
        return None
    with db.blobopen("inbound_raw", "data", rowid, readonly=True) as blob:
        return bytes(blob.read(-1 if limit is None else limit))


def copy_raw(session: Any, mail_id: int, fd: int) -> bool:
    """Write the raw bytes of mail `mail_id` to the file descriptor `fd` (SQLite: a CHUNK at a time); False
    when it has none."""
    db = _sqlite(session)
    if db is None:
        pg = _postgresql(session)
        if pg is None:
            data = read_raw(session, mail_id)
            if data is not None:
                _write_all(fd, data)
            return data is not None
        # a slice at a time, in binary (not twice its size in hex, in libpq's buffer that stays with the
        # connection); PostgreSQL reads only the TOAST chunks of an uncompressed value's slice
        with pg.cursor(binary=True) as cur:
            at = 1
            while True:
                cur.execute("SELECT substr(data, %s, %s) FROM inbound_raw WHERE mail_id = %s", (at, PIECE, mail_id))
                row = cur.fetchone()
                if row is None or row[0] is None:
                    return at > 1
                _write_all(fd, row[0])
                at += len(row[0])
                if len(row[0]) < PIECE:
                    return True
    rowid = _rowid(db, mail_id)
    if rowid is None:
        return False
    with db.blobopen("inbound_raw", "data", rowid, readonly=True) as blob:
        while True:
            chunk = blob.read(CHUNK)
            if not chunk:
                return True
            _write_all(fd, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


BIG_BIND = 1024 * 1024  # see release_big_binds
_RELEASING: weakref.WeakSet[Any] = weakref.WeakSet()  # engines that release_big_binds was installed on


def release_big_binds(engine: Any, threshold: int = BIG_BIND) -> bool:
    """SQLite only: a pooled connection that bound a value of `threshold` bytes or more (a large mail's raw
    bytes) is closed when it goes back to the pool; the pool opens a new one when it needs one.

    Python's sqlite3 keeps its prepared statements in a cache, and SQLite keeps its own copy of every value
    bound to a statement (SQLITE_TRANSIENT) until the statement is bound again: after a 25 MB mail was
    stored, the connection that stored it holds another 25 MB for as long as it lives, and the threading that
    follows (which reads the mail back) comes on top of that. Closing the connection finalizes its statements.
    Returns False for other databases (nothing to do)."""
    from sqlalchemy import event

    if engine.dialect.name != "sqlite":
        return False
    if engine in _RELEASING:
        return True
    _RELEASING.add(engine)

    def values(parameters: Any) -> Iterator[Any]:  # one row or many, positional or named
        for p in parameters.values() if isinstance(parameters, dict) else parameters or ():
            if isinstance(p, (tuple, list)):
                yield from p
            elif isinstance(p, dict):
                yield from p.values()
            else:
                yield p

    @event.listens_for(engine, "before_cursor_execute")
    def _mark(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if any(isinstance(v, (bytes, bytearray, memoryview)) and len(v) >= threshold for v in values(parameters)):
            conn.info["tg_big_bind"] = True

    @event.listens_for(engine.pool, "checkin")
    def _release(dbapi_connection, record):  # type: ignore[no-untyped-def]
        if record is not None and record.info.pop("tg_big_bind", False):
            record.invalidate()  # closes the DBAPI connection (and its statements); reopened on demand

    return True


def read_last_commit(sessions: Any, query: Any) -> list[tuple[Any, ...]]:
    """The rows of `query`, read without taking the write lock: on SQLite every session begins IMMEDIATE
    (gateway.db), which would wait for another thread's write transaction; a plain SELECT on the driver's
    connection reads the last commit instead (WAL). Other databases: a session's plain read."""
    bind = sessions.kw.get("bind")
    if bind is not None and bind.dialect.name == "sqlite":
        compiled = query.compile(dialect=bind.dialect, compile_kwargs={"render_postcompile": True})
        params = [compiled.params[k] for k in compiled.positiontup or ()]
        conn = bind.raw_connection()
        try:
            return [tuple(r) for r in conn.driver_connection.execute(str(compiled), params).fetchall()]
        finally:
            conn.close()
    with sessions() as s:
        return [tuple(row) for row in s.execute(query)]
