"""Small dialect helpers (SQLite and PostgreSQL) for the SLA feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def _dialect_insert(session: Session) -> Any:
    """The dialect's INSERT (both have ON CONFLICT DO NOTHING)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def insert_ignore(session: Session, table: Table, values: Mapping[str, Any],
                  conflict: Sequence[str]) -> int | None:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING RETURNING id: the new row's id, or None when a row with
    the same key exists (committed, or in flight in another transaction that then commits: PostgreSQL waits
    for it). This is the database-side claim behind every once-only action."""
    insert = _dialect_insert(session)
    pk = list(table.primary_key.columns)[0]
    stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=list(conflict)).returning(pk)
    return session.execute(stmt).scalar()


def insert_many_ignore(session: Session, table: Table, rows: Sequence[Mapping[str, Any]],
                       conflict: Sequence[str]) -> list[tuple[Any, ...]]:
    """Multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING (id, ticket_id, kind): only the rows this
    statement inserted come back (chunks of 500 rows)."""
    insert = _dialect_insert(session)
    stmt = (insert(table).on_conflict_do_nothing(index_elements=list(conflict))
            .returning(table.c.id, table.c.ticket_id, table.c.kind))
    # executemany with RETURNING: SQLAlchemy's "insertmanyvalues" batches it into multi-row statements
    return [tuple(r) for r in session.execute(stmt, [dict(r) for r in rows])]


def for_update(query: Any, session: Session) -> Any:
    """Lock the selected rows on PostgreSQL, skipping rows another instance holds (SQLite: BEGIN IMMEDIATE
    already serialises writers)."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query
