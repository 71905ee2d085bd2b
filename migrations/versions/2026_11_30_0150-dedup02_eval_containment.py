"""dedup: word n-gram fingerprints of evaluation examples (containment guard), their sweep versions;
eval hits say their method.

Revision ID: dedup02
Revises: train03
Create Date: 2026-11-30 01:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'dedup02'
down_revision: str | None = 'train03'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'dedup_eval_ngrams',
        sa.Column('example_id', sa.Uuid(), nullable=False),
        sa.Column('h', sa.BigInteger(), nullable=False),
        sa.Column('eval_dataset_id', sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(['eval_dataset_id'], ['datasets.id'], name=op.f('fk_dedup_eval_ngrams_eval_dataset_id_datasets')),
        sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_dedup_eval_ngrams_example_id_examples')),
        sa.PrimaryKeyConstraint('example_id', 'h', name=op.f('pk_dedup_eval_ngrams')),
    )
    op.create_index('ix_dedup_eval_ngrams_eval_dataset_id_h', 'dedup_eval_ngrams', ['eval_dataset_id', 'h'])
    with op.batch_alter_table('dedup_eval_hits') as batch:
        batch.add_column(sa.Column('method', sa.String(length=20), server_default='minhash', nullable=False))
    with op.batch_alter_table('dedup_state') as batch:
        batch.add_column(sa.Column('ngram_version', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('swept_version', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('dedup_state') as batch:
        batch.drop_column('swept_version')
        batch.drop_column('ngram_version')
    with op.batch_alter_table('dedup_eval_hits') as batch:
        batch.drop_column('method')
    op.drop_index('ix_dedup_eval_ngrams_eval_dataset_id_h', table_name='dedup_eval_ngrams')
    op.drop_table('dedup_eval_ngrams')
