"""pipeline: stage leases (a running stage task's claim on its batch, renewed while it runs; the
sweeper re-enqueues the examples of an expired one).

Revision ID: pipe01
Revises: review02
Create Date: 2026-12-03 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'pipe01'
down_revision: str | None = 'review02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new, empty table: no lock on anything live.
    op.create_table(
        'stage_leases',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('stage', sa.String(length=32), nullable=False),
        sa.Column('example_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                  nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_stage_leases')),
    )
    op.create_index('ix_stage_leases_expires_at', 'stage_leases', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_stage_leases_expires_at', table_name='stage_leases')
    op.drop_table('stage_leases')
