"""review_session_revocations: reviewer-page sessions ended by sign-out (a sealed cookie replays otherwise).

Revision ID: review02
Revises: dedup02
Create Date: 2026-12-03 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'review02'
down_revision: str | None = 'dedup02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'review_session_revocations',
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('session_id', name=op.f('pk_review_session_revocations')),
    )
    op.create_index(op.f('ix_review_session_revocations_expires_at'), 'review_session_revocations',
                    ['expires_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_review_session_revocations_expires_at'), table_name='review_session_revocations')
    op.drop_table('review_session_revocations')
