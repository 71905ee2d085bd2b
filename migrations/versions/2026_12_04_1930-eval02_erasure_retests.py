"""eval02: erasure re-tests (issue 17 scope 7): per model an erasure tainted, whether a retrained version
was probed for the erased subject's strings; the strings themselves, sealed, held while a re-test is pending.

Revision ID: eval02
Revises: pref01
Create Date: 2026-12-04 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'eval02'
down_revision: str | None = 'pref01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'erasure_retests',
        sa.Column('erasure_request_id', sa.Uuid(), nullable=False),
        sa.Column('model_name', sa.String(length=200), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('evaluation_id', sa.Uuid(), nullable=True),
        sa.Column('model_version', sa.Integer(), nullable=True),
        sa.Column('result', JSON, nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['erasure_request_id'], ['erasure_requests.id'],
                                name=op.f('fk_erasure_retests_erasure_request_id_erasure_requests')),
        sa.PrimaryKeyConstraint('erasure_request_id', 'model_name', name=op.f('pk_erasure_retests')),
    )
    op.create_table(
        'erasure_retest_strings',
        sa.Column('erasure_request_id', sa.Uuid(), nullable=False),
        sa.Column('batch', sa.Integer(), nullable=False),
        sa.Column('probes', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.String(length=32), nullable=False),
        sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(['erasure_request_id'], ['erasure_requests.id'],
                                name=op.f('fk_erasure_retest_strings_erasure_request_id_erasure_requests')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_erasure_retest_strings')),
    )
    op.create_index(op.f('ix_erasure_retest_strings_erasure_request_id'), 'erasure_retest_strings',
                    ['erasure_request_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_erasure_retest_strings_erasure_request_id'), table_name='erasure_retest_strings')
    op.drop_table('erasure_retest_strings')
    op.drop_table('erasure_retests')
