"""pii: each finding keeps how many words its value had, `value_words`.

Dedup's comparison view writes a scrubbed value as that many words derived from its token, so a
three-word name weighs in the comparison what it weighs in the text (with one word for every value, two
fills of a long template looked more alike after scrubbing than before). The count only, never the words.

Revision ID: pii07
Revises: pii06
Create Date: 2026-12-03 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'pii07'
down_revision: str | None = 'pii06'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pii_findings') as batch:
        batch.add_column(sa.Column('value_words', sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pii_findings') as batch:
        batch.drop_column('value_words')
