"""review: reviews, leases, escalations, machine suggestions.

Revision ID: review01
Revises: pii01
Create Date: 2026-11-30 00:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'review01'
down_revision: str | None = 'pii01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('reviews',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('reviewer', sa.String(length=200), nullable=False),
    sa.Column('reviewer_key_id', sa.Uuid(), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('reason_code', sa.String(length=64), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('leased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolves_escalation', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_reviews_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_reviews_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_reviews_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews')),
    sa.UniqueConstraint('revision_id', 'reviewer_key_id', name=op.f('uq_reviews_revision_id_reviewer_key_id')),
    )
    op.create_index('ix_reviews_example_id_revision_id', 'reviews', ['example_id', 'revision_id'], unique=False)
    op.create_index('ix_reviews_dataset_id_created_at', 'reviews', ['dataset_id', 'created_at'], unique=False)
    op.create_table('review_leases',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('holder_key_id', sa.Uuid(), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_review_leases_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_review_leases_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_review_leases_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('example_id', name=op.f('pk_review_leases')),
    )
    op.create_index(op.f('ix_review_leases_dataset_id'), 'review_leases', ['dataset_id'], unique=False)
    op.create_index('ix_review_leases_holder_key_id', 'review_leases', ['holder_key_id'], unique=False)
    op.create_table('review_escalations',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_review_escalations_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_review_escalations_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_review_escalations_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('example_id', name=op.f('pk_review_escalations')),
    )
    op.create_index(op.f('ix_review_escalations_dataset_id'), 'review_escalations', ['dataset_id'], unique=False)
    op.create_table('review_suggestions',
    sa.Column('example_id', sa.Uuid(), nullable=False),
    sa.Column('revision_id', sa.Uuid(), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('label', sa.String(length=64), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('reason_code', sa.String(length=64), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], name=op.f('fk_review_suggestions_example_id_examples')),
    sa.ForeignKeyConstraint(['revision_id'], ['example_revisions.id'], name=op.f('fk_review_suggestions_revision_id_example_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_suggestions')),
    )
    op.create_index('ix_review_suggestions_example_id_created_at', 'review_suggestions', ['example_id', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_table('review_suggestions')
    op.drop_table('review_escalations')
    op.drop_table('review_leases')
    op.drop_table('reviews')
