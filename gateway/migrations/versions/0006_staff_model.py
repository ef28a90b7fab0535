"""staff model: link kinds (no schema change), time entries, merged tickets, who spoke last, organisation
visibility, blocked contacts

Revision ID: 0006_staff_model
Revises: 0001_core
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

import gateway.models

revision = '0006_staff_model'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('time_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=True),
    sa.Column('author_email', sa.String(length=320), nullable=True),
    sa.Column('minutes', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('spent_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_time_entries_ticket_id', 'time_entries', ['ticket_id'], unique=False)
    # a plain ADD COLUMN: a batch copy of `tickets` (what Alembic does for a constraint on SQLite) drops the old
    # table, and with foreign keys enforced that deletes what refers to it; SQLite takes REFERENCES there
    if op.get_bind().dialect.name == 'sqlite':
        op.execute("ALTER TABLE tickets ADD COLUMN merged_into_id INTEGER "
                   "CONSTRAINT fk_tickets_merged_into REFERENCES tickets (id) ON DELETE SET NULL")
    else:
        op.add_column('tickets', sa.Column('merged_into_id', sa.Integer(), nullable=True))
        op.create_foreign_key('fk_tickets_merged_into', 'tickets', 'tickets', ['merged_into_id'], ['id'],
                              ondelete='SET NULL')
    op.add_column('tickets', sa.Column('customer_spoke_last', sa.Boolean(), nullable=False,
                                       server_default=sa.true()))
    with op.batch_alter_table('organisations') as b:
        b.add_column(sa.Column('visibility', sa.String(length=16), nullable=False, server_default='reporter-only'))
    with op.batch_alter_table('contacts') as b:
        b.add_column(sa.Column('blocked', sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column('blocked_reason', sa.Text(), nullable=True))
    # who spoke last in public on the tickets that exist: the author of their last public comment
    op.execute(sa.text(
        "UPDATE tickets SET customer_spoke_last = NOT COALESCE((SELECT c.by_staff FROM comments c "
        "WHERE c.ticket_id = tickets.id AND NOT c.internal ORDER BY c.id DESC LIMIT 1), :no)"
    ).bindparams(no=False))


def downgrade() -> None:
    with op.batch_alter_table('contacts') as b:
        b.drop_column('blocked_reason')
        b.drop_column('blocked')
    with op.batch_alter_table('organisations') as b:
        b.drop_column('visibility')
    with op.batch_alter_table('tickets') as b:
        b.drop_column('customer_spoke_last')
        b.drop_column('merged_into_id')
    op.drop_index('ix_time_entries_ticket_id', table_name='time_entries')
    op.drop_table('time_entries')
