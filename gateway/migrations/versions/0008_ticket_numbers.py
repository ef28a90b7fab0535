"""ticket numbers from a sequence on PostgreSQL: several instances take numbers without waiting for each other

The row `counters.ticket`, incremented under its row lock, serialised every transaction that opens a ticket
until it committed: with several `serve` instances on one database, their threading transactions queued up
behind each other. A sequence hands out numbers without a lock (a rolled-back ticket leaves a gap). SQLite
keeps the counter row: it has one writer anyway.

Revision ID: 0008_ticket_numbers
Revises: 0001_core
Create Date: 2026-12-06
"""
from alembic import op

revision = '0008_ticket_numbers'
down_revision = '0001_core'
branch_labels = None
depends_on = None

SEQUENCE = "ticket_numbers"  # gateway.tickets.TICKET_NUMBER_SEQUENCE


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE SEQUENCE {SEQUENCE} AS BIGINT START WITH 1 MINVALUE 1")
    # go on after the highest number given so far (the counter, or a ticket's number, whichever is higher)
    op.execute(f"SELECT setval('{SEQUENCE}', GREATEST((SELECT COALESCE(MAX(value), 0) FROM counters "
               f"WHERE name = 'ticket'), (SELECT COALESCE(MAX(number), 0) FROM tickets)) + 1, false)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("UPDATE counters SET value = GREATEST(value, (SELECT COALESCE(MAX(number), 0) FROM tickets)) "
               "WHERE name = 'ticket'")
    op.execute(f"DROP SEQUENCE {SEQUENCE}")
