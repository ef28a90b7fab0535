"""The raw bytes of a large mail into and out of `inbound_raw` without extra copies of it in memory.

SQLite copies every value bound to a statement (SQLITE_TRANSIENT) and builds the row's record in memory too:
inserting a 25 MB mail the usual way costs two more copies of it, and reading it back a third one (the column
value, then Python's bytes). For a mail of BIG bytes or more on SQLite the row is inserted with a zeroblob of
its size and the bytes are written (and read) through SQLite's incremental blob I/O, a CHUNK at a time: only
the caller's own buffer is ever whole in memory. Other databases (PostgreSQL) take the plain statement.
Runs inside the caller's session and transaction.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import func, insert, select

from gateway.models import InboundRaw, table_of

BIG = 1024 * 1024
CHUNK = 1024 * 1024


def _sqlite(session: Any) -> Any:
    """The session's sqlite3 connection, or None on another database."""
    conn = session.connection()
    if conn.dialect.name != "sqlite":
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
        session.connection().execute(insert(table), [{"mail_id": mail_id, "data": raw}])
        return
    session.connection().execute(insert(table).values(mail_id=mail_id, data=func.zeroblob(len(raw))))
    rowid = _rowid(db, mail_id)
    assert rowid is not None
    view = memoryview(raw)
    with db.blobopen("inbound_raw", "data", rowid) as blob:
        for at in range(0, len(view), CHUNK):
            blob.write(view[at:at + CHUNK])


def read_raw(session: Any, mail_id: int) -> bytes | None:
    """The raw bytes of mail `mail_id` (one copy in memory), None when it has none."""
    db = _sqlite(session)
    if db is None:
        data = session.execute(select(InboundRaw.data).where(InboundRaw.mail_id == mail_id)).scalar()
        return None if data is None else bytes(data)
    rowid = _rowid(db, mail_id)
    if rowid is None:
        return None
    with db.blobopen("inbound_raw", "data", rowid, readonly=True) as blob:
        return bytes(blob.read())


def copy_raw(session: Any, mail_id: int, fd: int) -> bool:
    """Write the raw bytes of mail `mail_id` to the file descriptor `fd` (SQLite: a CHUNK at a time); False
    when it has none."""
    db = _sqlite(session)
    if db is None:
        data = read_raw(session, mail_id)
        if data is None:
            return False
        _write_all(fd, data)
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
