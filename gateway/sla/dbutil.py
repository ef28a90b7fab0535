"""Small dialect helpers (SQLite and PostgreSQL) for the SLA feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVarTuple

from sqlalchemy import Select, Table
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

Ts = TypeVarTuple("Ts")


def _dialect_insert(session: Session, table: Table) -> PgInsert | SqliteInsert:
    """The dialect's INSERT into `table` (both have ON CONFLICT DO NOTHING)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def insert_ignore(session: Session, table: Table, values: Mapping[str, Any],
                  conflict: Sequence[str]) -> int | None:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING RETURNING id: the new row's id, or None when a row with
    the same key exists (committed, or in flight in another transaction that then commits: PostgreSQL waits
    for it). This is the database-side claim behind every once-only action."""
    pk = list(table.primary_key.columns)[0]
    stmt = (_dialect_insert(session, table).values(**values).on_conflict_do_nothing(index_elements=list(conflict))
            .returning(pk))
    return session.execute(stmt).scalar()


def insert_many_ignore(session: Session, table: Table, rows: Sequence[Mapping[str, Any]],
                       conflict: Sequence[str]) -> list[tuple[Any, ...]]:
    """Multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING (id, ticket_id, kind): only the rows this
    statement inserted come back (chunks of 500 rows)."""
    stmt = (_dialect_insert(session, table).on_conflict_do_nothing(index_elements=list(conflict))
            .returning(table.c.id, table.c.ticket_id, table.c.kind))
    # executemany with RETURNING: SQLAlchemy's "insertmanyvalues" batches it into multi-row statements
    return [tuple(r) for r in session.execute(stmt, [dict(r) for r in rows])]


def for_update(query: Select[*Ts], session: Session) -> Select[*Ts]:
    """Lock the selected rows on PostgreSQL, skipping rows another instance holds (SQLite: BEGIN IMMEDIATE
    already serialises writers)."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query
