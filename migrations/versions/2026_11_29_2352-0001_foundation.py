"""foundation: datasets, examples with provenance and immutable revisions, ingest batches,
exact-duplicate links, API keys, hash-chained audit log.

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 23:52:49.486391
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('is_human', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    op.create_table('audit_events',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('entity_type', sa.String(length=50), nullable=False),
    sa.Column('entity_id', sa.String(length=100), nullable=True),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_events'))
    )
    op.create_index(op.f('ix_audit_events_action'), 'audit_events', ['action'], unique=False)
    op.create_index(op.f('ix_audit_events_entity_id'), 'audit_events', ['entity_id'], unique=False)
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head'))
    )
    # Hand edit: the chain's genesis row. Appends update it under a row lock (see AuditHead).
    audit_head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger), sa.column("hash", sa.String))
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": "0" * 64}])
    op.create_table('datasets',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('format', sa.String(length=20), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('review_policy', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('pii_policy', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('dedup_policy', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('quality_rules', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('is_eval_set', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    sa.UniqueConstraint('name', name=op.f('uq_datasets_name'))
    )
    op.create_table('ingest_batches',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.String(length=20), nullable=False),
    sa.Column('atomic', sa.Boolean(), nullable=False),
    sa.Column('defaults', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('unchanged', sa.Integer(), nullable=False),
    sa.Column('exact_duplicates', sa.Integer(), nullable=False),
    sa.Column('errors', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_ingest_batches_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_batches'))
    )
    op.create_index(op.f('ix_ingest_batches_dataset_id'), 'ingest_batches', ['dataset_id'], unique=False)
    op.create_table('examples',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('current_revision_id', sa.Uuid(), nullable=True),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('source_ref', sa.String(length=500), nullable=True),
    sa.Column('collected_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('license', sa.String(length=100), nullable=True),
    sa.Column('legal_basis', sa.String(length=100), nullable=True),
    sa.Column('ingest_batch_id', sa.Uuid(), nullable=True),
    sa.Column('ingested_by', sa.String(length=200), nullable=False),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_examples_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['ingest_batch_id'], ['ingest_batches.id'], name=op.f('fk_examples_ingest_batch_id_ingest_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_examples')),
    sa.UniqueConstraint('dataset_id', 'source', 'source_ref', name=op.f('uq_examples_dataset_id_source_source_ref'))
    )
    op.create_index('ix_examples_dataset_id_status_id', 'examples', ['dataset_id', 'status', 'id'], unique=False)
    op.create_index(op.f('ix_examples_ingest_batch_id'), 'examples', ['ingest_batch_id'], unique=False)
    op.create_index(op.f('ix_examples_license'), 'examples', ['license'], unique=False)
    op.create_index('ix_examples_stage', 'examples', ['stage'], unique=False)
    op.create_table('duplicate_links',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('canonical_example_id', sa.Uuid(), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('similarity', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['canonical_example_id'], ['examples.id'], name=op.f('fk_duplicate_links_canonical_example_id_examples')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_duplicate_links_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_duplicate_links_example_id_examples')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_duplicate_links')),
    sa.UniqueConstraint('example_id', 'canonical_example_id', 'method', name=op.f('uq_duplicate_links_example_id_canonical_example_id_method'))
    )
    op.create_index(op.f('ix_duplicate_links_canonical_example_id'), 'duplicate_links', ['canonical_example_id'], unique=False)
    op.create_index(op.f('ix_duplicate_links_dataset_id'), 'duplicate_links', ['dataset_id'], unique=False)
    op.create_index(op.f('ix_duplicate_links_example_id'), 'duplicate_links', ['example_id'], unique=False)
    op.create_table('example_revisions',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('parent_id', sa.Uuid(), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('author', sa.String(length=200), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('quality', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_example_revisions_example_id_examples')),
    sa.ForeignKeyConstraint(['parent_id'], ['example_revisions.id'], name=op.f('fk_example_revisions_parent_id_example_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_example_revisions')),
    sa.UniqueConstraint('example_id', 'seq', name=op.f('uq_example_revisions_example_id_seq'))
    )
    op.create_index(op.f('ix_example_revisions_content_sha256'), 'example_revisions', ['content_sha256'], unique=False)
    # Hand edit: examples <-> example_revisions is circular, so this FK comes after both tables.
    # Deferred, so one transaction can insert an example and its first revision in either order.
    fk_args = dict(initially="DEFERRED", deferrable=True)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("examples") as batch:
            batch.create_foreign_key(op.f("fk_examples_current_revision_id_example_revisions"),
                                     "example_revisions", ["current_revision_id"], ["id"], **fk_args)
    else:
        op.create_foreign_key(op.f("fk_examples_current_revision_id_example_revisions"), "examples",
                              "example_revisions", ["current_revision_id"], ["id"], **fk_args)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("fk_examples_current_revision_id_example_revisions"), "examples", type_="foreignkey")
    op.drop_index(op.f('ix_example_revisions_content_sha256'), table_name='example_revisions')
    op.drop_table('example_revisions')
    op.drop_index(op.f('ix_duplicate_links_example_id'), table_name='duplicate_links')
    op.drop_index(op.f('ix_duplicate_links_dataset_id'), table_name='duplicate_links')
    op.drop_index(op.f('ix_duplicate_links_canonical_example_id'), table_name='duplicate_links')
    op.drop_table('duplicate_links')
    op.drop_index('ix_examples_stage', table_name='examples')
    op.drop_index(op.f('ix_examples_license'), table_name='examples')
    op.drop_index(op.f('ix_examples_ingest_batch_id'), table_name='examples')
    op.drop_index('ix_examples_dataset_id_status_id', table_name='examples')
    op.drop_table('examples')
    op.drop_index(op.f('ix_ingest_batches_dataset_id'), table_name='ingest_batches')
    op.drop_table('ingest_batches')
    op.drop_table('datasets')
    op.drop_table('audit_head')
    op.drop_index(op.f('ix_audit_events_entity_id'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_action'), table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_table('api_keys')
