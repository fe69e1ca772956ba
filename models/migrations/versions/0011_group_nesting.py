"""Nested groups: a group may be a member of another group

Revision ID: 0011_group_nesting
Revises: 0010_directory_watermarks
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0011_group_nesting'
down_revision = '0010_directory_watermarks'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('group_nesting',
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('member_group_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id']),
    sa.ForeignKeyConstraint(['member_group_id'], ['groups.id']),
    sa.PrimaryKeyConstraint('group_id', 'member_group_id')
    )
    op.create_index('ix_group_nesting_member_group_id', 'group_nesting', ['member_group_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_group_nesting_member_group_id', table_name='group_nesting')
    op.drop_table('group_nesting')
