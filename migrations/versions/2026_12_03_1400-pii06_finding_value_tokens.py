"""pii: each finding keeps a keyed hash (HMAC) of the value it replaced, `value_token`.

Dedup compares near duplicates on a view of the scrubbed text where each span is its token (equal values,
equal tokens; different values, different tokens), and the PII report counts scrubbed values by token.
Findings made before this revision have none (null): their examples are compared on the scrubbed text as
before, until a re-scrub (docs/pii.md) gives them tokens.

Revision ID: pii06
Revises: pii05
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'pii06'
down_revision: str | None = 'pii05'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pii_findings') as batch:
        batch.add_column(sa.Column('value_token', sa.String(length=16), nullable=True))
        batch.create_index('ix_pii_findings_dataset_id_value_token', ['dataset_id', 'value_token'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pii_findings') as batch:
        batch.drop_index('ix_pii_findings_dataset_id_value_token')
        batch.drop_column('value_token')
