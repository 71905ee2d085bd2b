"""snapshots: frozen, content-addressed sets of example revisions with their split.

Revision ID: snap01
Revises: review01
Create Date: 2026-11-30 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'snap01'
down_revision: str | None = 'review01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('snapshots',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('format', sa.String(length=20), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('split_manifests', JSON, nullable=False),
    sa.Column('filter', JSON, nullable=False),
    sa.Column('validation_fraction', sa.Float(), nullable=False),
    sa.Column('seed', sa.String(length=100), nullable=False),
    sa.Column('stratify_by', sa.String(length=100), nullable=True),
    sa.Column('member_count', sa.Integer(), nullable=False),
    sa.Column('counts', JSON, nullable=False),
    sa.Column('stats', JSON, nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('contains_erased', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_snapshots_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_snapshots')),
    sa.UniqueConstraint('dataset_id', 'name', name=op.f('uq_snapshots_dataset_id_name')),
    )
    op.create_index(op.f('ix_snapshots_dataset_id'), 'snapshots', ['dataset_id'], unique=False)
    op.create_index(op.f('ix_snapshots_manifest_sha256'), 'snapshots', ['manifest_sha256'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Hand-written: LIST-partitioned by snapshot, one partition per freeze, kept in their own schema
        # (see app/models/snapshot.py for why). The DEFAULT partition catches rows written outside a
        # freeze (fixtures, repairs), so a direct INSERT never fails for want of a partition.
        op.execute("CREATE SCHEMA IF NOT EXISTS snapshot_parts")
        op.execute(
            "CREATE TABLE snapshot_members (snapshot_id uuid NOT NULL, example_id uuid NOT NULL, "
            "revision_id uuid NOT NULL, split varchar(10) NOT NULL, content_sha256 varchar(64) NOT NULL, "
            "CONSTRAINT pk_snapshot_members PRIMARY KEY (snapshot_id, example_id)) PARTITION BY LIST (snapshot_id)"
        )
        op.execute("CREATE INDEX ix_snapshot_members_example_id ON snapshot_members (example_id)")
        op.execute("CREATE TABLE snapshot_parts.members_default PARTITION OF snapshot_members DEFAULT")
    else:
        op.create_table('snapshot_members',
        sa.Column('snapshot_id', sa.Uuid(), nullable=False),
        sa.Column('example_id', sa.Uuid(), nullable=False),
        sa.Column('revision_id', sa.Uuid(), nullable=False),
        sa.Column('split', sa.String(length=10), nullable=False),
        sa.Column('content_sha256', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('snapshot_id', 'example_id', name=op.f('pk_snapshot_members')),
        )
        op.create_index('ix_snapshot_members_example_id', 'snapshot_members', ['example_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_snapshot_members_example_id', table_name='snapshot_members')
    op.drop_table('snapshot_members')  # on PostgreSQL this drops every partition with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SCHEMA IF EXISTS snapshot_parts CASCADE")
    op.drop_index(op.f('ix_snapshots_manifest_sha256'), table_name='snapshots')
    op.drop_index(op.f('ix_snapshots_dataset_id'), table_name='snapshots')
    op.drop_table('snapshots')
