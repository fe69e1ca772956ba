"""Directory pulls: each entry's anchor and the local user it became, and each directory's watermark

Revision ID: 0010_directory_watermarks
Revises: 0008_wso2_webhooks
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0010_directory_watermarks'
down_revision = '0008_wso2_webhooks'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('directory_entries',
    sa.Column('dn', sa.Text(), nullable=False),
    sa.Column('directory', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('anchor', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('pulled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id']),
    sa.PrimaryKeyConstraint('directory', 'anchor')
    )
    op.create_index('ix_directory_entries_user_id', 'directory_entries', ['user_id'], unique=False)
    op.create_table('directory_watermarks',
    sa.Column('directory', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('attribute', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('settings_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('full_pull_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('directory')
    )


def downgrade() -> None:
    op.drop_table('directory_watermarks')
    op.drop_index('ix_directory_entries_user_id', table_name='directory_entries')
    op.drop_table('directory_entries')
