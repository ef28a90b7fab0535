"""hostile senders: sender authentication, SMTP client data, released quarantine reasons, vouched addresses,
the flood cap's index

Revision ID: 0005_hostile_senders
Revises: 0001_core
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0005_hostile_senders'
down_revision = '0001_core'
branch_labels = None
depends_on = None

# Contacts and watchers that exist before sender checks were added keep receiving mail as before.
BEFORE = 'known before sender checks'


def upgrade() -> None:
    with op.batch_alter_table('inbound_mail') as b:
        b.add_column(sa.Column('client_ip', sa.String(length=64), nullable=True))
        b.add_column(sa.Column('client_helo', sa.String(length=255), nullable=True))
        b.add_column(sa.Column('auth', sa.JSON(), nullable=True))
        b.add_column(sa.Column('released', sa.JSON(), nullable=True))
    op.create_index('ix_inbound_mail_sender_received', 'inbound_mail', ['sender', 'received_at'], unique=False)
    with op.batch_alter_table('contacts') as b:
        b.add_column(sa.Column('vouched', sa.String(length=200), nullable=True))
    with op.batch_alter_table('watchers') as b:
        b.add_column(sa.Column('vouched', sa.String(length=200), nullable=True))
    op.execute(sa.text("UPDATE contacts SET vouched = :v").bindparams(v=BEFORE))
    op.execute(sa.text("UPDATE watchers SET vouched = :v").bindparams(v=BEFORE))


def downgrade() -> None:
    with op.batch_alter_table('watchers') as b:
        b.drop_column('vouched')
    with op.batch_alter_table('contacts') as b:
        b.drop_column('vouched')
    op.drop_index('ix_inbound_mail_sender_received', table_name='inbound_mail')
    with op.batch_alter_table('inbound_mail') as b:
        b.drop_column('released')
        b.drop_column('auth')
        b.drop_column('client_helo')
        b.drop_column('client_ip')
