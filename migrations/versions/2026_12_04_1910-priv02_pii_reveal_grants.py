"""priv02: purpose-bound PII reveal grants with four-eyes approval (issue 21).

Revision ID: priv02
Revises: priv01
Create Date: 2026-12-04 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'priv02'
down_revision: str | None = 'priv01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'pii_grants',
        sa.Column('key_id', sa.Uuid(), nullable=False),
        sa.Column('dataset_id', sa.Uuid(), nullable=False),
        sa.Column('purpose', sa.Text(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('requested_by', sa.String(length=200), nullable=False),
        sa.Column('requested_by_key_id', sa.Uuid(), nullable=False),
        sa.Column('approved_by', sa.String(length=200), nullable=True),
        sa.Column('approved_by_key_id', sa.Uuid(), nullable=True),
        sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_by', sa.String(length=200), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoke_reason', sa.Text(), nullable=True),
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_pii_grants_dataset_id_datasets'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_pii_grants_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pii_grants')),
    )
    op.create_index('ix_pii_grants_key_id_status', 'pii_grants', ['key_id', 'status'])


def downgrade() -> None:
    op.drop_index('ix_pii_grants_key_id_status', table_name='pii_grants')
    op.drop_table('pii_grants')
