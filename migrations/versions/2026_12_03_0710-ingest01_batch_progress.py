"""ingest: import batches record their committed progress (lines_committed, last_seen) so a batch
whose import died says exactly what was stored; status gains `interrupted`.

Revision ID: ingest01
Revises: pii03
Create Date: 2026-12-03 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'ingest01'
down_revision: str | None = 'pii03'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('ingest_batches') as batch:
        batch.add_column(sa.Column('lines_committed', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True))
    # The stale-import sweep looks only at open batches; the rest of the table is history.
    op.create_index('ix_ingest_batches_status', 'ingest_batches', ['status'])


def downgrade() -> None:
    op.drop_index('ix_ingest_batches_status', table_name='ingest_batches')
    with op.batch_alter_table('ingest_batches') as batch:
        batch.drop_column('last_seen')
        batch.drop_column('lines_committed')
