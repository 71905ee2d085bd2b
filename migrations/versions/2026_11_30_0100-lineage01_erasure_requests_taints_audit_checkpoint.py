"""lineage: erasure requests, model version taints, audit verification checkpoint.

Revision ID: lineage01
Revises: dedup01
Create Date: 2026-11-30 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'lineage01'
down_revision: str | None = 'dedup01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table('erasure_requests',
    sa.Column('selector', JSON, nullable=False),
    sa.Column('selector_sha256', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('confirm', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('report', JSON, nullable=False),
    sa.Column('batches_done', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasure_requests')),
    )
    op.create_index(op.f('ix_erasure_requests_selector_sha256'), 'erasure_requests', ['selector_sha256'], unique=False)
    op.create_table('model_version_taints',
    sa.Column('model_version_id', sa.Uuid(), nullable=False),
    sa.Column('erasure_request_id', sa.Uuid(), nullable=False),
    sa.Column('examples', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['erasure_request_id'], ['erasure_requests.id'],
                            name=op.f('fk_model_version_taints_erasure_request_id_erasure_requests')),
    sa.PrimaryKeyConstraint('model_version_id', 'erasure_request_id', name=op.f('pk_model_version_taints')),
    )
    op.create_index(op.f('ix_model_version_taints_erasure_request_id'), 'model_version_taints',
                    ['erasure_request_id'], unique=False)
    op.create_table('audit_checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('full_verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_checkpoints')),
    )


def downgrade() -> None:
    op.drop_table('audit_checkpoints')
    op.drop_index(op.f('ix_model_version_taints_erasure_request_id'), table_name='model_version_taints')
    op.drop_table('model_version_taints')
    op.drop_index(op.f('ix_erasure_requests_selector_sha256'), table_name='erasure_requests')
    op.drop_table('erasure_requests')
