"""pii: datasets record the PII profile (preset) they were created with; existing datasets get `default`,
which is what they were scrubbed under.

Revision ID: pii08
Revises: pii07
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'pii08'
down_revision: str | None = 'pii07'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('pii_profile', sa.String(length=40), server_default='default', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('pii_profile')
