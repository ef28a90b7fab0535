"""api: HTTP API tokens (hashed) and the keys of idempotent creates

Revision ID: 0005_api
Revises: 0001_core
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

import gateway.models

revision = '0005_api'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', gateway.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('secret_sha256')
    )
    op.create_table('api_idempotency',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_index('ix_api_idempotency_ticket', 'api_idempotency', ['ticket_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_api_idempotency_ticket', table_name='api_idempotency')
    op.drop_table('api_idempotency')
    op.drop_table('api_tokens')
