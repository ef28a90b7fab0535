"""leases: one holder per named job across instances sharing the database (the IMAP poller of a mailbox)

Revision ID: 0007_leases
Revises: 0001_core
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0007_leases'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('acquired_at', sa.Float(), nullable=False),
    sa.Column('renewed_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('leases')
