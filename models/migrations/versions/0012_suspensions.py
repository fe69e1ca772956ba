"""Suspend, then delete: when each account was switched off on deprovisioning

Revision ID: 0012_suspensions
Revises: 0011_group_nesting
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0012_suspensions'
down_revision = '0011_group_nesting'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('suspensions',
    sa.Column('connector', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('local_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('remote_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('suspended_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('connector', 'local_id')
    )


def downgrade() -> None:
    op.drop_table('suspensions')
