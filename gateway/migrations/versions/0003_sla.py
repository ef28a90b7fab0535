"""SLA: policies, per-ticket clocks, escalations sent (once per ticket, kind and deadline), sweep indexes

Revision ID: 0003_sla
Revises: 0001_core
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

import gateway.models

revision = '0003_sla'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sla_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('response_minutes', sa.Integer(), nullable=False),
    sa.Column('resolution_minutes', sa.Integer(), nullable=False),
    sa.Column('priorities', sa.JSON(), nullable=False),
    sa.Column('types', sa.JSON(), nullable=False),
    sa.Column('organisations', sa.JSON(), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('calendar', sa.JSON(), nullable=True),
    sa.Column('warn_percent', sa.Integer(), nullable=True),
    sa.Column('warn_minutes_before', sa.Integer(), nullable=True),
    sa.Column('escalate_to', sa.JSON(), nullable=False),
    sa.Column('notify_assignee', sa.Boolean(), nullable=False),
    sa.Column('notify_group', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('removed_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('sla_clocks',
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('warn_response_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('warn_resolution_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('ticket_id')
    )
    with op.batch_alter_table('sla_clocks', schema=None) as batch_op:
        batch_op.create_index('ix_sla_clocks_next_at', ['next_at', 'ticket_id'], unique=False,
                              sqlite_where=sa.text('next_at IS NOT NULL'),
                              postgresql_where=sa.text('next_at IS NOT NULL'))
    op.create_table('sla_escalations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('deadline', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('due_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('suppressed', sa.Boolean(), nullable=False),
    sa.Column('outbox_ref', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ticket_id', 'kind', 'deadline', name='uq_sla_escalations_once')
    )
    with op.batch_alter_table('sla_escalations', schema=None) as batch_op:
        batch_op.create_index('ix_sla_escalations_sent_at', ['sent_at'], unique=False)
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.create_index('ix_tickets_status_remind_at', ['status', 'remind_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_tickets_status_remind_at')
    with op.batch_alter_table('sla_escalations', schema=None) as batch_op:
        batch_op.drop_index('ix_sla_escalations_sent_at')
    op.drop_table('sla_escalations')
    with op.batch_alter_table('sla_clocks', schema=None) as batch_op:
        batch_op.drop_index('ix_sla_clocks_next_at', sqlite_where=sa.text('next_at IS NOT NULL'),
                            postgresql_where=sa.text('next_at IS NOT NULL'))
    op.drop_table('sla_clocks')
    op.drop_table('sla_policies')
