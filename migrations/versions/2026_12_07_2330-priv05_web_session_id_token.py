"""priv05: the ID token of an SSO page session (issue 21), kept as the id_token_hint of RP-initiated
logout: sign-out sends the browser to the provider's end_session_endpoint with it and clears it. One
nullable column: sessions opened before it end at the provider without a hint (the provider then asks).

Revision ID: priv05
Revises: gov02
Create Date: 2026-12-07 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'priv05'
down_revision: str | None = 'gov02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('web_sessions', sa.Column('id_token', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('web_sessions') as batch:
        batch.drop_column('id_token')
