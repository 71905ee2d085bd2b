"""training_runs: idempotency_key + request_sha256, unique per caller (retries of POST /v1/training-runs).

Revision ID: train03
Revises: snap02
Create Date: 2026-11-30 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'train03'
down_revision: str | None = 'snap02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs') as batch:
        batch.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('request_sha256', sa.String(length=64), nullable=True))
        batch.create_unique_constraint('uq_training_runs_created_by_idempotency_key',
                                       ['created_by', 'idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table('training_runs') as batch:
        batch.drop_constraint('uq_training_runs_created_by_idempotency_key', type_='unique')
        batch.drop_column('request_sha256')
        batch.drop_column('idempotency_key')
