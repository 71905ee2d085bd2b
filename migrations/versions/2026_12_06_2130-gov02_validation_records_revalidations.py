"""gov02: revalidation (issue 19 scope 3). One validation record per example (when, and by which PII engine,
spaCy model, recognizer set, PII and dedup policy), the recognizer sets by version, background
revalidations with their progress, and the recognizer set on each scrub.

Existing examples that were validated (gov01's last_validated_at) get a record with what is known: the
engine and model of their latest scrub. Their recognizer set and dedup policy were never recorded, so they
stay NULL, which the revalidation check reads as "changed": the first check after the upgrade revalidates
them (docs/governance.md).

Revision ID: gov02
Revises: priv04
Create Date: 2026-12-06 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'gov02'
down_revision: str | None = 'priv04'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'pii_recognizer_sets',
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('recognizers', JSON, nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint('version', name=op.f('pk_pii_recognizer_sets')),
    )
    op.create_table(
        'revalidations',
        sa.Column('dataset_id', sa.Uuid(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('triggers', JSON, nullable=False),
        sa.Column('scope', sa.String(length=20), nullable=False),
        sa.Column('requested_by', sa.String(length=200), nullable=False),
        sa.Column('target', JSON, nullable=True),
        sa.Column('phase', sa.String(length=20), nullable=False),
        sa.Column('cursor', sa.Uuid(), nullable=True),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('changed', sa.Integer(), nullable=False),
        sa.Column('unchanged', sa.Integer(), nullable=False),
        sa.Column('approvals_reset', sa.Integer(), nullable=False),
        sa.Column('skipped', sa.Integer(), nullable=False),
        sa.Column('batches', sa.Integer(), nullable=False),
        sa.Column('plan', JSON, nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('superseded_by', sa.Uuid(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_revalidations_dataset_id_datasets')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_revalidations')),
    )
    op.create_index('ix_revalidations_dataset_id_status', 'revalidations', ['dataset_id', 'status'])
    op.create_table(
        'example_validations',
        sa.Column('example_id', sa.Uuid(), nullable=False),
        sa.Column('dataset_id', sa.Uuid(), nullable=False),
        sa.Column('revision_id', sa.Uuid(), nullable=True),
        sa.Column('validated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('via', sa.String(length=20), nullable=False),
        sa.Column('pii_engine', sa.String(length=100), nullable=True),
        sa.Column('spacy_model', sa.String(length=100), nullable=True),
        sa.Column('recognizers', sa.String(length=64), nullable=True),
        sa.Column('pii_policy_sha256', sa.String(length=64), nullable=True),
        sa.Column('dedup_policy_sha256', sa.String(length=64), nullable=True),
        sa.Column('revalidation_id', sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'],
                                name=op.f('fk_example_validations_dataset_id_datasets')),
        sa.ForeignKeyConstraint(['example_id'], ['examples.id'],
                                name=op.f('fk_example_validations_example_id_examples')),
        sa.ForeignKeyConstraint(['revalidation_id'], ['revalidations.id'],
                                name=op.f('fk_example_validations_revalidation_id_revalidations')),
        sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'],
                                name=op.f('fk_example_validations_revision_id_example_revisions')),
        sa.PrimaryKeyConstraint('example_id', name=op.f('pk_example_validations')),
    )
    op.create_index('ix_example_validations_dataset_id_example_id', 'example_validations',
                    ['dataset_id', 'example_id'])
    with op.batch_alter_table('pii_scrubs') as batch:
        batch.add_column(sa.Column('recognizers', sa.String(length=64), nullable=True))
    latest = "FROM pii_scrubs s WHERE s.example_id = e.id ORDER BY s.created_at DESC LIMIT 1"
    op.execute(
        "INSERT INTO example_validations (example_id, dataset_id, revision_id, validated_at, via, pii_engine, "
        "spacy_model, pii_policy_sha256) "
        f"SELECT e.id, e.dataset_id, e.current_revision_id, e.last_validated_at, 'migration', "
        f"(SELECT s.engine {latest}), (SELECT s.model {latest}), (SELECT s.policy_sha256 {latest}) "
        "FROM examples e WHERE e.last_validated_at IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table('pii_scrubs') as batch:
        batch.drop_column('recognizers')
    op.drop_index('ix_example_validations_dataset_id_example_id', table_name='example_validations')
    op.drop_table('example_validations')
    op.drop_index('ix_revalidations_dataset_id_status', table_name='revalidations')
    op.drop_table('revalidations')
    op.drop_table('pii_recognizer_sets')
