"""transports: IMAP poller state (imap_seen, keyed on account, folder, UIDVALIDITY, UID)

Revision ID: 0004_transports
Revises: 0001_core
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

import gateway.models

revision = '0004_transports'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('imap_seen',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account', sa.String(length=100), nullable=False),
    sa.Column('folder', sa.String(length=500), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('mail_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('moved_to', sa.String(length=500), nullable=True),
    sa.Column('created_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', gateway.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mail_id'], ['inbound_mail.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account', 'folder', 'uidvalidity', 'uid', name='uq_imap_seen_key')
    )
    op.create_index('ix_imap_seen_mail_id', 'imap_seen', ['mail_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_imap_seen_mail_id', table_name='imap_seen')
    op.drop_table('imap_seen')
