"""dedup: stored signatures (the index is rebuilt from them), verified pairs (clusters are their connected
components), reviewer decisions, eval-set hits, per-dataset state (the clustering lock) and rebuild jobs.
New tables only, so nothing on a live database is locked for long.

Revision ID: dedup01
Revises: snap01
Create Date: 2026-11-30 00:11:34.961393
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'dedup01'
down_revision: str | None = 'snap01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dedup_rebuilds',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dedup_rebuilds_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dedup_rebuilds'))
    )
    with op.batch_alter_table('dedup_rebuilds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dedup_rebuilds_dataset_id'), ['dataset_id'], unique=False)

    op.create_table('dedup_state',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('spec_tag', sa.String(length=100), nullable=True),
    sa.Column('rebuild', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dedup_state_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('dataset_id', name=op.f('pk_dedup_state'))
    )
    op.create_table('dedup_decisions',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('other_example_id', sa.Uuid(), nullable=False),
    sa.Column('decision', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('decided_by', sa.String(length=200), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dedup_decisions_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_dedup_decisions_example_id_examples')),
    sa.ForeignKeyConstraint(['other_example_id'], ['examples.id'], name=op.f('fk_dedup_decisions_other_example_id_examples')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dedup_decisions')),
    sa.UniqueConstraint('example_id', 'other_example_id', 'decision', name=op.f('uq_dedup_decisions_example_id_other_example_id_decision'))
    )
    with op.batch_alter_table('dedup_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dedup_decisions_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dedup_decisions_example_id'), ['example_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dedup_decisions_other_example_id'), ['other_example_id'], unique=False)

    op.create_table('dedup_eval_hits',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('eval_dataset_id', sa.Uuid(), nullable=False),
    sa.Column('eval_example_id', sa.Uuid(), nullable=False),
    sa.Column('similarity', sa.Float(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dedup_eval_hits_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['eval_dataset_id'], ['datasets.id'], name=op.f('fk_dedup_eval_hits_eval_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['eval_example_id'], ['examples.id'], name=op.f('fk_dedup_eval_hits_eval_example_id_examples')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_dedup_eval_hits_example_id_examples')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dedup_eval_hits')),
    sa.UniqueConstraint('example_id', 'eval_example_id', name=op.f('uq_dedup_eval_hits_example_id_eval_example_id'))
    )
    with op.batch_alter_table('dedup_eval_hits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dedup_eval_hits_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dedup_eval_hits_example_id'), ['example_id'], unique=False)

    op.create_table('dedup_pairs',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('example_a_id', sa.Uuid(), nullable=False),
    sa.Column('example_b_id', sa.Uuid(), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('similarity', sa.Float(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dedup_pairs_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_a_id'], ['examples.id'], name=op.f('fk_dedup_pairs_example_a_id_examples')),
    sa.ForeignKeyConstraint(['example_b_id'], ['examples.id'], name=op.f('fk_dedup_pairs_example_b_id_examples')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dedup_pairs')),
    sa.UniqueConstraint('example_a_id', 'example_b_id', name=op.f('uq_dedup_pairs_example_a_id_example_b_id'))
    )
    with op.batch_alter_table('dedup_pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dedup_pairs_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dedup_pairs_example_b_id'), ['example_b_id'], unique=False)

    op.create_table('dedup_signatures',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('spec_tag', sa.String(length=100), nullable=False),
    sa.Column('signature', sa.LargeBinary(), nullable=False),
    sa.Column('flags', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dedup_signatures_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_dedup_signatures_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_dedup_signatures_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('example_id', name=op.f('pk_dedup_signatures'))
    )
    with op.batch_alter_table('dedup_signatures', schema=None) as batch_op:
        batch_op.create_index('ix_dedup_signatures_dataset_id_example_id', ['dataset_id', 'example_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('dedup_signatures', schema=None) as batch_op:
        batch_op.drop_index('ix_dedup_signatures_dataset_id_example_id')

    op.drop_table('dedup_signatures')
    with op.batch_alter_table('dedup_pairs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dedup_pairs_example_b_id'))
        batch_op.drop_index(batch_op.f('ix_dedup_pairs_dataset_id'))

    op.drop_table('dedup_pairs')
    with op.batch_alter_table('dedup_eval_hits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dedup_eval_hits_example_id'))
        batch_op.drop_index(batch_op.f('ix_dedup_eval_hits_dataset_id'))

    op.drop_table('dedup_eval_hits')
    with op.batch_alter_table('dedup_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dedup_decisions_other_example_id'))
        batch_op.drop_index(batch_op.f('ix_dedup_decisions_example_id'))
        batch_op.drop_index(batch_op.f('ix_dedup_decisions_dataset_id'))

    op.drop_table('dedup_decisions')
    op.drop_table('dedup_state')
    with op.batch_alter_table('dedup_rebuilds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dedup_rebuilds_dataset_id'))

    op.drop_table('dedup_rebuilds')
