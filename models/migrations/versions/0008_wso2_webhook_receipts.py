"""WSO2 webhooks: the token ids received (a second one is a replay) and WSO2's user ids of local users

Revision ID: 0008_wso2_webhooks
Revises: 0007
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0008_wso2_webhooks'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_receipts',
    sa.Column('jti', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('issuer', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('ignored', sa.Integer(), nullable=False),
    sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('jti')
    )
    op.create_index('ix_webhook_receipts_received_at', 'webhook_receipts', ['received_at'], unique=False)
    op.create_table('source_users',
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('remote_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id']),
    sa.PrimaryKeyConstraint('source', 'remote_id')
    )
    op.create_index('ix_source_users_user_id', 'source_users', ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_source_users_user_id', table_name='source_users')
    op.drop_table('source_users')
    op.drop_index('ix_webhook_receipts_received_at', table_name='webhook_receipts')
    op.drop_table('webhook_receipts')
