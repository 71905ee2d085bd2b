"""lineage: model_version_facets (examples and tokens per source, license, legal basis of each version).

Revision ID: lineage03
Revises: train02
Create Date: 2026-11-30 01:25:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'lineage03'
down_revision: str | None = 'train02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('model_version_facets',
    sa.Column('model_version_id', sa.Uuid(), nullable=False),
    sa.Column('facet', sa.String(length=20), nullable=False),
    sa.Column('value', sa.String(length=200), nullable=False),
    sa.Column('examples', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('model_version_id', 'facet', 'value', name=op.f('pk_model_version_facets')),
    )
    op.create_index('ix_model_version_facets_facet_value', 'model_version_facets', ['facet', 'value'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_model_version_facets_facet_value', table_name='model_version_facets')
    op.drop_table('model_version_facets')
