"""priv06: a registered model belongs to one workspace (issue 21). Model names stay one namespace for the
installation, but what hangs off a name (aliases, their history, the promotion policy, erasure re-tests)
was shared by every workspace that trained under it: another workspace's same-named version could claim an
erasure re-test and be handed the erased subject's strings, move an alias or rewrite the gates.

Existing names go to the workspace of their first version's dataset (a name whose versions span
workspaces keeps the others' versions, readable by them by version, but name-wide operations are its
owner's: docs/security.md, "Workspaces"); a name with no resolvable version goes to `default`.

Revision ID: priv06
Revises: priv05
Create Date: 2026-12-08 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'priv06'
down_revision: str | None = 'priv05'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, and added in place rather than by a batch copy: SQLite rebuilds a table to alter it, and
    # dropping the old registered_models fails its referencing rows' foreign keys (model_versions,
    # model_aliases), which the app's connections enforce (written before migrations/env.py turned that off
    # for the copies; in place is still the cheaper way). Every row is filled below and every new one is
    # written with its workspace (app/training/registry.py, `reserve`).
    bind = op.get_bind()
    fk = 'fk_registered_models_workspace_id_workspaces'
    if bind.dialect.name == 'sqlite':
        # Alembic would add the foreign key as a separate ALTER, which SQLite has not got; a column
        # constraint in the ADD COLUMN is allowed (hand-written for that reason).
        op.execute(f'ALTER TABLE registered_models ADD COLUMN workspace_id CHAR(32) '
                   f'CONSTRAINT {fk} REFERENCES workspaces (id)')
    else:
        op.add_column('registered_models', sa.Column('workspace_id', sa.Uuid(), nullable=True))
        op.create_foreign_key(op.f(fk), 'registered_models', 'workspaces', ['workspace_id'], ['id'])
    op.create_index(op.f('ix_registered_models_workspace_id'), 'registered_models', ['workspace_id'])
    rm = sa.table('registered_models', sa.column('name', sa.String()), sa.column('workspace_id', sa.Uuid()))
    mv = sa.table('model_versions', sa.column('name', sa.String()), sa.column('version', sa.Integer()),
                  sa.column('run_id', sa.Uuid()))
    run = sa.table('training_runs', sa.column('id', sa.Uuid()), sa.column('snapshot_id', sa.Uuid()))
    snap = sa.table('snapshots', sa.column('id', sa.Uuid()), sa.column('dataset_id', sa.Uuid()))
    ds = sa.table('datasets', sa.column('id', sa.Uuid()), sa.column('workspace_id', sa.Uuid()))
    ws = sa.table('workspaces', sa.column('id', sa.Uuid()), sa.column('name', sa.String()))
    # One correlated UPDATE (registered models are few): the first version's dataset's workspace.
    first = (sa.select(ds.c.workspace_id).select_from(mv)
             .join(run, run.c.id == mv.c.run_id).join(snap, snap.c.id == run.c.snapshot_id)
             .join(ds, ds.c.id == snap.c.dataset_id)
             .where(mv.c.name == rm.c.name).order_by(mv.c.version).limit(1).scalar_subquery())
    bind.execute(rm.update().values(workspace_id=first))
    default = sa.select(ws.c.id).where(ws.c.name == 'default').scalar_subquery()
    bind.execute(rm.update().where(rm.c.workspace_id.is_(None)).values(workspace_id=default))


def downgrade() -> None:
    op.drop_index(op.f('ix_registered_models_workspace_id'), table_name='registered_models')
    with op.batch_alter_table('registered_models') as batch:
        batch.drop_constraint(op.f('fk_registered_models_workspace_id_workspaces'), type_='foreignkey')
        batch.drop_column('workspace_id')
