"""outbound: the outbox (one row per outgoing mail and envelope recipient; also the rate-limit bookkeeping)

Revision ID: 0002_outbound
Revises: 0001_core
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

import gateway.models

revision = '0002_outbound'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('comment_id', sa.Integer(), nullable=True),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('batch', sa.String(length=32), nullable=False),
    sa.Column('caused_by_mail', sa.Boolean(), nullable=False),
    sa.Column('recipient', sa.String(length=320), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=True),
    sa.Column('token', sa.String(length=64), nullable=True),
    sa.Column('envelope_from', sa.String(length=320), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('claimed_until', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    op.create_index('ix_outbox_due', 'outbox', ['status', 'next_attempt_at'], unique=False)
    op.create_index('ix_outbox_recipient', 'outbox', ['recipient', 'caused_by_mail', 'created_at', 'status'],
                    unique=False)
    op.create_index('ix_outbox_ticket', 'outbox', ['ticket_id', 'created_at'], unique=False)
    op.create_index('ix_outbox_token', 'outbox', ['token'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbox_token', table_name='outbox')
    op.drop_index('ix_outbox_ticket', table_name='outbox')
    op.drop_index('ix_outbox_recipient', table_name='outbox')
    op.drop_index('ix_outbox_due', table_name='outbox')
    op.drop_table('outbox')
