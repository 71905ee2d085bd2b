"""Alembic environment: targets app.models metadata; URL from the app's settings.

Safe on a live PostgreSQL: a lock timeout makes a migration that would queue behind long
transactions fail fast instead of blocking every writer behind its own lock request. On SQLite,
foreign keys are not enforced while migrations copy tables, and checked before the upgrade commits.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

import app.models  # noqa: F401  (registers every table)
from app.core.db import get_engine
from app.models.base import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = context.config.attributes.get("connection")
    if connectable is None:
        connectable = get_engine()
        with connectable.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection) -> None:
    if connection.dialect.name != "sqlite":
        connection.execute(text("SET lock_timeout = '5s'"))
        connection.execute(text("SET statement_timeout = '10min'"))
        _migrate(connection, is_sqlite=False)
        return
    # SQLite alters a table by copying it (batch mode): create the new table, copy the rows, DROP the
    # old one, rename. With foreign keys enforced (the app's connections turn them on) that DROP is an
    # implicit DELETE of every row: it fails on any row that references the table (a dataset with a
    # snapshot), or cascades and deletes the referencing rows where the key says ON DELETE CASCADE.
    # Alembic's advice: enforcement off for the migration, which SQLite only accepts outside a
    # transaction, then PRAGMA foreign_key_check before committing, so a migration that really breaks a
    # reference fails loudly instead of being hidden by the switch.
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if connection.exec_driver_sql("PRAGMA foreign_keys").scalar() != 0:
        raise RuntimeError("migrations: PRAGMA foreign_keys=OFF had no effect (a transaction was already open on "
                           "the connection); refusing to copy tables with foreign keys enforced")
    try:
        _migrate(connection, is_sqlite=True)
    finally:
        if connection.in_transaction():
            connection.rollback()  # only after a failure: a successful run has committed
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def _check_foreign_keys(connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        shown = "; ".join(f"{t} rowid {rowid} -> {parent} (key {fk})" for t, rowid, parent, fk in broken[:20])
        raise RuntimeError(f"migrations left {len(broken)} broken foreign key reference(s): {shown}")


def _migrate(connection, *, is_sqlite: bool) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite,  # SQLite alters tables by copying them
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()
        if is_sqlite:
            _check_foreign_keys(connection)
    if connection.in_transaction():
        connection.commit()


run_migrations_online()
