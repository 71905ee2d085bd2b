"""lineage: composite indexes on the training domain's lineage table for lineage queries.

Revision ID: lineage02
Revises: train01
Create Date: 2026-11-30 01:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'lineage02'
down_revision: str | None = 'train01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ('ix_lineage_model_version_id_example_id', ['model_version_id', 'example_id']),
    ('ix_lineage_example_id_model_version_id', ['example_id', 'model_version_id']),
)


def upgrade() -> None:
    # Hand edit: IF NOT EXISTS, so an operator with a large live lineage table can build these first with
    # CREATE INDEX CONCURRENTLY (which cannot run inside this migration's transaction) and this step is
    # then a no-op instead of blocking run registrations for the duration of the build.
    for name, cols in INDEXES:
        op.create_index(name, 'lineage', cols, unique=False, if_not_exists=True)


def downgrade() -> None:
    for name, _ in INDEXES:
        op.drop_index(name, table_name='lineage')
