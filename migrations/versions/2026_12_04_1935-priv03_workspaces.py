"""priv03: workspaces (issue 21): datasets belong to one, keys hold roles per workspace, audit events
carry the workspace. Existing installations: everything goes into `default`, and every non-admin key
becomes a member of it with the role it has today (admin stays global), so nobody's access changes.

Revision ID: priv03
Revises: eval02
Create Date: 2026-12-04 19:20:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'priv03'
down_revision: str | None = 'eval02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    workspaces = op.create_table(
        'workspaces',
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=True),
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_workspaces')),
        sa.UniqueConstraint('name', name=op.f('uq_workspaces_name')),
    )
    op.create_table(
        'workspace_members',
        sa.Column('workspace_id', sa.Uuid(), nullable=False),
        sa.Column('key_id', sa.Uuid(), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_workspace_members_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'],
                                name=op.f('fk_workspace_members_workspace_id_workspaces'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('workspace_id', 'key_id', name=op.f('pk_workspace_members')),
    )
    op.create_index(op.f('ix_workspace_members_key_id'), 'workspace_members', ['key_id'])
    default_id = uuid.uuid4()
    op.bulk_insert(workspaces, [{'id': default_id, 'name': 'default', 'created_by': 'migration priv03'}])
    bind = op.get_bind()
    # Today's roles, as memberships of `default` (set-based: one INSERT ... SELECT).
    members = sa.table('workspace_members', sa.column('workspace_id', sa.Uuid()), sa.column('key_id', sa.Uuid()),
                       sa.column('role', sa.String()), sa.column('created_at', sa.DateTime(timezone=True)),
                       sa.column('created_by', sa.String()))
    keys = sa.table('api_keys', sa.column('id', sa.Uuid()), sa.column('role', sa.String()))
    bind.execute(members.insert().from_select(
        ['workspace_id', 'key_id', 'role', 'created_at', 'created_by'],
        sa.select(sa.literal(default_id, sa.Uuid()), keys.c.id, keys.c.role, sa.func.now(),
                  sa.literal('migration priv03')).where(keys.c.role != 'admin')))
    # Add nullable, fill, then NOT NULL: on PostgreSQL one UPDATE of every dataset row (datasets are few).
    op.add_column('datasets', sa.Column('workspace_id', sa.Uuid(), nullable=True))
    datasets = sa.table('datasets', sa.column('workspace_id', sa.Uuid()))
    bind.execute(datasets.update().values(workspace_id=default_id))
    with op.batch_alter_table('datasets') as batch:
        batch.alter_column('workspace_id', existing_type=sa.Uuid(), nullable=False)
        batch.create_foreign_key(op.f('fk_datasets_workspace_id_workspaces'), 'workspaces', ['workspace_id'], ['id'])
        batch.create_index(op.f('ix_datasets_workspace_id'), ['workspace_id'])
    # Old events stay without a workspace (their hashes were made without one); nullable, no rewrite.
    op.add_column('audit_events', sa.Column('workspace_id', sa.Uuid(), nullable=True))
    op.create_index(op.f('ix_audit_events_workspace_id'), 'audit_events', ['workspace_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_audit_events_workspace_id'), table_name='audit_events')
    with op.batch_alter_table('audit_events') as batch:
        batch.drop_column('workspace_id')
    with op.batch_alter_table('datasets') as batch:
        batch.drop_index(op.f('ix_datasets_workspace_id'))
        batch.drop_constraint(op.f('fk_datasets_workspace_id_workspaces'), type_='foreignkey')
        batch.drop_column('workspace_id')
    op.drop_index(op.f('ix_workspace_members_key_id'), table_name='workspace_members')
    op.drop_table('workspace_members')
    op.drop_table('workspaces')
