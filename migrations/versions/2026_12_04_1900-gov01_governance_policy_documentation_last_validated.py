"""gov: datasets gain governance_policy (revalidation, bias thresholds) and documentation (curator-written
intended uses and limitations); examples gain last_validated_at. Existing examples that finished the
pipeline count as validated when they were last updated (the closest record there is); the others stay NULL.

Revision ID: gov01
Revises: eval01
Create Date: 2026-12-04 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'gov01'
down_revision: str | None = 'eval01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('governance_policy', JSON, server_default='{}', nullable=False))
        batch.add_column(sa.Column('documentation', JSON, server_default='{}', nullable=False))
    with op.batch_alter_table('examples') as batch:
        batch.add_column(sa.Column('last_validated_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE examples SET last_validated_at = updated_at WHERE stage IS NULL")


def downgrade() -> None:
    with op.batch_alter_table('examples') as batch:
        batch.drop_column('last_validated_at')
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('documentation')
        batch.drop_column('governance_policy')
