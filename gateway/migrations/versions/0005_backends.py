"""backends: tickets brokered to an external service desk (links, push queue, remote items, poll state,
customers)

Revision ID: 0005_backends
Revises: 0001_core
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

import gateway.models

revision = '0005_backends'
down_revision = '0001_core'
branch_labels = None
depends_on = None

T = gateway.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('backend_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=50), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('remote_key', sa.String(length=100), nullable=True),
    sa.Column('remote_id', sa.String(length=100), nullable=True),
    sa.Column('remote_status', sa.String(length=100), nullable=True),
    sa.Column('customer_id', sa.String(length=200), nullable=True),
    sa.Column('status_note', sa.Text(), nullable=True),
    sa.Column('refresh_at', T, nullable=True),
    sa.Column('read_at', T, nullable=True),
    sa.Column('created_at', T, nullable=False),
    sa.Column('updated_at', T, nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ref'),
    sa.UniqueConstraint('backend', 'ticket_id', name='uq_backend_links_ticket'))
    op.create_index('ix_backend_links_remote', 'backend_links', ['backend', 'remote_key'])
    op.create_index('ix_backend_links_refresh', 'backend_links', ['refresh_at'])
    op.create_table('backend_queue',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=50), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('op', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', T, nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('result', sa.String(length=200), nullable=True),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('claimed_until', T, nullable=True),
    sa.Column('created_at', T, nullable=False),
    sa.Column('done_at', T, nullable=True),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_backend_queue_due', 'backend_queue', ['status', 'next_attempt_at'])
    op.create_index('ix_backend_queue_ticket', 'backend_queue', ['ticket_id', 'status', 'id'])
    op.create_table('backend_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=50), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('remote_id', sa.String(length=100), nullable=False),
    sa.Column('comment_id', sa.Integer(), nullable=True),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('created_at', T, nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('backend', 'kind', 'remote_id', name='uq_backend_items_remote'))
    op.create_table('backend_state',
    sa.Column('backend', sa.String(length=50), nullable=False),
    sa.Column('polled_until', T, nullable=True),
    sa.Column('poll_requested', sa.Boolean(), nullable=False),
    sa.Column('paused_until', T, nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('updated_at', T, nullable=False),
    sa.PrimaryKeyConstraint('backend'))
    op.create_table('backend_customers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=50), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('remote_id', sa.String(length=200), nullable=True),
    sa.Column('pending_since', T, nullable=True),
    sa.Column('created_at', T, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('backend', 'email', name='uq_backend_customers_email'))


def downgrade() -> None:
    op.drop_table('backend_customers')
    op.drop_table('backend_state')
    op.drop_table('backend_items')
    op.drop_index('ix_backend_queue_ticket', table_name='backend_queue')
    op.drop_index('ix_backend_queue_due', table_name='backend_queue')
    op.drop_table('backend_queue')
    op.drop_index('ix_backend_links_refresh', table_name='backend_links')
    op.drop_index('ix_backend_links_remote', table_name='backend_links')
    op.drop_table('backend_links')
