"""The schema comes from Alembic; a model change without a migration fails here."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.core.db import get_engine
from app.models import Base


def _diff():
    with get_engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_models_and_migrations_agree(db):
    diff = _diff()
    assert diff == [], f"models and migrations disagree; write a migration: {diff}"


def test_revision_files_are_date_prefixed():
    import re
    from pathlib import Path

    versions = Path(__file__).resolve().parents[2] / "migrations" / "versions"
    files = [p.name for p in versions.glob("*.py")]
    assert files
    for name in files:
        assert re.match(r"^\d{4}_\d{2}_\d{2}_\d{4}-", name), name
