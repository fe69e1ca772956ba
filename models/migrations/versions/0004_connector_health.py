"""connector health: consecutive failures and quarantine per connector, kept in the store so every worker sees it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('connector_health',
    sa.Column('connector', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('opened_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('retry_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('backoff', sa.Float(), nullable=False),
    sa.Column('last_error_code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('connector')
    )


def downgrade() -> None:
    op.drop_table('connector_health')
