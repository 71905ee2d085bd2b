"""priv01: API key lifecycle (issue 21): expiry, last use (coalesced), rotation with the rotated-out
secrets kept for their overlap window.

Revision ID: priv01
Revises: gov01
Create Date: 2026-12-04 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'priv01'
down_revision: str | None = 'gov01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without defaults: metadata-only on PostgreSQL, no table rewrite.
    op.add_column('api_keys', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('api_keys', sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('api_keys', sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'api_key_previous_secrets',
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('key_id', sa.Uuid(), nullable=False),
        sa.Column('key_sha256', sa.String(length=64), nullable=False),
        sa.Column('valid_until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_api_key_previous_secrets_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('prefix', name=op.f('pk_api_key_previous_secrets')),
    )
    op.create_index(op.f('ix_api_key_previous_secrets_key_id'), 'api_key_previous_secrets', ['key_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_api_key_previous_secrets_key_id'), table_name='api_key_previous_secrets')
    op.drop_table('api_key_previous_secrets')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('rotated_at')
        batch.drop_column('last_used_at')
        batch.drop_column('expires_at')
