"""pii: encrypted raw-text vault, one row per scrub (unique per example and source revision), findings
with reviewer verdicts. New tables only, so nothing on a live database is locked for long.

Revision ID: pii01
Revises: 0001
Create Date: 2026-11-30 00:06:25.406713
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'pii01'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pii_findings',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('source_revision_id', sa.Uuid(), nullable=False),
    sa.Column('field_path', sa.String(length=200), nullable=False),
    sa.Column('entity_type', sa.String(length=64), nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('end', sa.Integer(), nullable=False),
    sa.Column('scrubbed_start', sa.Integer(), nullable=False),
    sa.Column('scrubbed_end', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('recognizer', sa.String(length=100), nullable=False),
    sa.Column('operator', sa.String(length=20), nullable=False),
    sa.Column('engine', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('verdict', sa.String(length=20), nullable=True),
    sa.Column('verdict_by', sa.String(length=200), nullable=True),
    sa.Column('verdict_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_pii_findings_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_pii_findings_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_pii_findings_revision_id_example_revisions')),
    sa.ForeignKeyConstraint(['source_revision_id'], ['example_revisions.id'], name=op.f('fk_pii_findings_source_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pii_findings'))
    )
    with op.batch_alter_table('pii_findings', schema=None) as batch_op:
        batch_op.create_index('ix_pii_findings_dataset_id_verdict', ['dataset_id', 'verdict'], unique=False)
        batch_op.create_index(batch_op.f('ix_pii_findings_example_id'), ['example_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pii_findings_revision_id'), ['revision_id'], unique=False)

    op.create_table('pii_scrubs',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('source_revision_id', sa.Uuid(), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=False),
    sa.Column('result_revision_id', sa.Uuid(), nullable=False),
    sa.Column('policy_sha256', sa.String(length=64), nullable=False),
    sa.Column('findings', sa.Integer(), nullable=False),
    sa.Column('flags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('engine', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_pii_scrubs_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_pii_scrubs_example_id_examples')),
    sa.ForeignKeyConstraint(['result_revision_id'], ['example_revisions.id'], name=op.f('fk_pii_scrubs_result_revision_id_example_revisions')),
    sa.ForeignKeyConstraint(['source_revision_id'], ['example_revisions.id'], name=op.f('fk_pii_scrubs_source_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pii_scrubs')),
    sa.UniqueConstraint('example_id', 'source_revision_id', name=op.f('uq_pii_scrubs_example_id_source_revision_id'))
    )
    with op.batch_alter_table('pii_scrubs', schema=None) as batch_op:
        batch_op.create_index('ix_pii_scrubs_dataset_id_source_sha256', ['dataset_id', 'source_sha256'], unique=False)

    op.create_table('pii_vault',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_pii_vault_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_pii_vault_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pii_vault')),
    sa.UniqueConstraint('revision_id', name=op.f('uq_pii_vault_revision_id'))
    )
    with op.batch_alter_table('pii_vault', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pii_vault_example_id'), ['example_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pii_vault_key_id'), ['key_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('pii_vault', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pii_vault_key_id'))
        batch_op.drop_index(batch_op.f('ix_pii_vault_example_id'))

    op.drop_table('pii_vault')
    with op.batch_alter_table('pii_scrubs', schema=None) as batch_op:
        batch_op.drop_index('ix_pii_scrubs_dataset_id_source_sha256')

    op.drop_table('pii_scrubs')
    with op.batch_alter_table('pii_findings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pii_findings_revision_id'))
        batch_op.drop_index(batch_op.f('ix_pii_findings_example_id'))
        batch_op.drop_index('ix_pii_findings_dataset_id_verdict')

    op.drop_table('pii_findings')
