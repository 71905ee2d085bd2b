"""Alembic environment: targets app.models metadata; URL from the app's settings.

Safe on a live PostgreSQL: a lock timeout makes a migration that would queue behind long
transactions fail fast instead of blocking every writer behind its own lock request.
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


def _run(connection) -> None:  # noqa: ANN001
    is_sqlite = connection.dialect.name == "sqlite"
    if not is_sqlite:
        connection.execute(text("SET lock_timeout = '5s'"))
        connection.execute(text("SET statement_timeout = '10min'"))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite,  # SQLite alters tables by copying them
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


run_migrations_online()
