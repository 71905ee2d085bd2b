"""training: runs and their events, the model registry (versions, aliases, alias history), lineage rows.

Revision ID: train01
Revises: lineage01
Create Date: 2026-11-30 00:51:43.363355
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'train01'
down_revision: str | None = 'lineage01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('model_alias_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('alias', sa.String(length=100), nullable=False),
    sa.Column('from_version', sa.Integer(), nullable=True),
    sa.Column('to_version', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_alias_history'))
    )
    with op.batch_alter_table('model_alias_history', schema=None) as batch_op:
        batch_op.create_index('ix_model_alias_history_name_alias_id', ['name', 'alias', 'id'], unique=False)

    op.create_table('registered_models',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('latest_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_registered_models'))
    )
    op.create_table('training_runs',
    sa.Column('snapshot_id', sa.Uuid(), nullable=False),
    sa.Column('expected_manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('base_model', sa.String(length=1000), nullable=False),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('hyperparameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('model_name', sa.String(length=200), nullable=False),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('failed_in', sa.String(length=20), nullable=True),
    sa.Column('error_code', sa.String(length=50), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('cancelled_by', sa.String(length=200), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], name=op.f('fk_training_runs_snapshot_id_snapshots')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_runs'))
    )
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_runs_model_name'), ['model_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_runs_snapshot_id'), ['snapshot_id'], unique=False)
        batch_op.create_index('ix_training_runs_status_heartbeat_at', ['status', 'heartbeat_at'], unique=False)

    op.create_table('model_versions',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('artifact_uri', sa.String(length=2000), nullable=False),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['name'], ['registered_models.name'], name=op.f('fk_model_versions_name_registered_models')),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], name=op.f('fk_model_versions_run_id_training_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_model_versions_name_version')),
    sa.UniqueConstraint('run_id', name=op.f('uq_model_versions_run_id'))
    )
    op.create_table('training_run_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('level', sa.String(length=10), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], name=op.f('fk_training_run_events_run_id_training_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_run_events'))
    )
    with op.batch_alter_table('training_run_events', schema=None) as batch_op:
        batch_op.create_index('ix_training_run_events_run_id_id', ['run_id', 'id'], unique=False)

    op.create_table('lineage',
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('model_version_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.Column('epochs', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_lineage_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], name=op.f('fk_lineage_run_id_training_runs')),
    sa.PrimaryKeyConstraint('run_id', 'revision_id', name=op.f('pk_lineage'))
    )
    with op.batch_alter_table('lineage', schema=None) as batch_op:
        batch_op.create_index('ix_lineage_example_id', ['example_id'], unique=False)
        batch_op.create_index('ix_lineage_model_version_id', ['model_version_id'], unique=False)
        batch_op.create_index('ix_lineage_revision_id', ['revision_id'], unique=False)

    op.create_table('model_aliases',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('alias', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Uuid(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_model_aliases_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['name'], ['registered_models.name'], name=op.f('fk_model_aliases_name_registered_models')),
    sa.PrimaryKeyConstraint('name', 'alias', name=op.f('pk_model_aliases'))
    )
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_aliases_model_version_id'), ['model_version_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_aliases_model_version_id'))

    op.drop_table('model_aliases')
    with op.batch_alter_table('lineage', schema=None) as batch_op:
        batch_op.drop_index('ix_lineage_revision_id')
        batch_op.drop_index('ix_lineage_model_version_id')
        batch_op.drop_index('ix_lineage_example_id')

    op.drop_table('lineage')
    with op.batch_alter_table('training_run_events', schema=None) as batch_op:
        batch_op.drop_index('ix_training_run_events_run_id_id')

    op.drop_table('training_run_events')
    op.drop_table('model_versions')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_training_runs_status_heartbeat_at')
        batch_op.drop_index(batch_op.f('ix_training_runs_snapshot_id'))
        batch_op.drop_index(batch_op.f('ix_training_runs_model_name'))

    op.drop_table('training_runs')
    op.drop_table('registered_models')
    with op.batch_alter_table('model_alias_history', schema=None) as batch_op:
        batch_op.drop_index('ix_model_alias_history_name_alias_id')

    op.drop_table('model_alias_history')
