"""eval: evaluations of model versions and their events, training-run canaries (secrets sealed like the
vault), model policies (promotion gates), and the override flag on alias history (issue 17).

Revision ID: eval01
Revises: pii08
Create Date: 2026-12-03 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'eval01'
down_revision: str | None = 'pii08'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('model_policies',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('gates', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('gated_aliases', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['name'], ['registered_models.name'], name=op.f('fk_model_policies_name_registered_models')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_model_policies'))
    )
    op.create_table('training_canaries',
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('canary_id', sa.String(length=40), nullable=False),
    sa.Column('template', sa.Text(), nullable=False),
    sa.Column('space', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('repetitions', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], name=op.f('fk_training_canaries_run_id_training_runs')),
    sa.PrimaryKeyConstraint('run_id', 'canary_id', name=op.f('pk_training_canaries'))
    )
    op.create_table('evaluations',
    sa.Column('model_version_id', sa.Uuid(), nullable=False),
    sa.Column('suites', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('eval_sets', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('reference', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('results', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error_code', sa.String(length=50), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('failed_in', sa.String(length=20), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('cancelled_by', sa.String(length=200), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_evaluations_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations'))
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index('ix_evaluations_model_version_id_id', ['model_version_id', 'id'], unique=False)
        batch_op.create_index('ix_evaluations_status_heartbeat_at', ['status', 'heartbeat_at'], unique=False)

    op.create_table('evaluation_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('evaluation_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('level', sa.String(length=10), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], name=op.f('fk_evaluation_events_evaluation_id_evaluations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation_events'))
    )
    with op.batch_alter_table('evaluation_events', schema=None) as batch_op:
        batch_op.create_index('ix_evaluation_events_evaluation_id_id', ['evaluation_id', 'id'], unique=False)

    with op.batch_alter_table('model_alias_history', schema=None) as batch_op:
        batch_op.add_column(sa.Column('override', sa.Boolean(), server_default=sa.false(), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('model_alias_history', schema=None) as batch_op:
        batch_op.drop_column('override')

    with op.batch_alter_table('evaluation_events', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluation_events_evaluation_id_id')

    op.drop_table('evaluation_events')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluations_status_heartbeat_at')
        batch_op.drop_index('ix_evaluations_model_version_id_id')

    op.drop_table('evaluations')
    op.drop_table('training_canaries')
    op.drop_table('model_policies')
