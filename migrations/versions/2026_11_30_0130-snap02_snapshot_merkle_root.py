"""snapshots: merkle_root (RFC 6962 root over the manifest's sorted lines, for membership proofs).

Nullable and not backfilled here: a backfill would sort every snapshot's members inside the
migration; snapshots frozen before this revision get their root computed once, on first use.

Revision ID: snap02
Revises: lineage03
Create Date: 2026-11-30 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'snap02'
down_revision: str | None = 'lineage03'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('snapshots', sa.Column('merkle_root', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('snapshots') as batch:
        batch.drop_column('merkle_root')
