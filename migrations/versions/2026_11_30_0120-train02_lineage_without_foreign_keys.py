"""training: lineage rows without foreign keys, and without the single-column indexes that lineage02's
composites make redundant (registration speed: bench/registration.py; see app/models/training.py).

Revision ID: train02
Revises: lineage02
Create Date: 2026-11-30 01:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'train02'
down_revision: str | None = 'lineage02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('lineage', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_lineage_run_id_training_runs'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_lineage_model_version_id_model_versions'), type_='foreignkey')
        batch_op.drop_index('ix_lineage_example_id')
        batch_op.drop_index('ix_lineage_model_version_id')


def downgrade() -> None:
    with op.batch_alter_table('lineage', schema=None) as batch_op:
        batch_op.create_index('ix_lineage_model_version_id', ['model_version_id'], unique=False)
        batch_op.create_index('ix_lineage_example_id', ['example_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_lineage_model_version_id_model_versions'), 'model_versions',
                                    ['model_version_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_lineage_run_id_training_runs'), 'training_runs', ['run_id'], ['id'])
