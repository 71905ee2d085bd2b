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


def test_priv06_gives_each_model_name_to_its_first_versions_workspace(tmp_path, monkeypatch):
    """A registry from before names had workspaces: `shared` was trained first in `team-b`, then in
    `default`; `solo` only in `default`. Each name goes to its first version's workspace."""
    import uuid

    from alembic import command
    from sqlalchemy import create_engine, text

    from app.core.config import reset_settings
    from app.core.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    monkeypatch.setenv("PEDIGREE_DATABASE_URL", url)
    reset_settings()
    command.upgrade(alembic_config(), "priv05")
    engine = create_engine(url)
    team_b = uuid.uuid4()
    with engine.begin() as conn:
        default = uuid.UUID(conn.execute(text("SELECT id FROM workspaces WHERE name = 'default'")).scalar_one())
        conn.execute(text("INSERT INTO workspaces (id, name, created_at) VALUES (:id, 'team-b', CURRENT_TIMESTAMP)"),
                     {"id": team_b.hex})

        def trained(ws: uuid.UUID, name: str, version: int) -> None:
            ds, snap, run = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            conn.execute(text("INSERT INTO datasets (id, name, format, description, review_policy, pii_policy, "
                              "pii_profile, dedup_policy, quality_rules, is_eval_set, governance_policy, documentation, "
                              "workspace_id, created_at) VALUES (:id, :n, 'chat', '', '{}', '{}', 'default', '{}', "
                              "'{}', 0, '{}', '{}', :ws, CURRENT_TIMESTAMP)"),
                         {"id": ds.hex, "n": f"ds-{ds.hex[:6]}", "ws": ws.hex})
            conn.execute(text("INSERT INTO snapshots (id, dataset_id, name, format, manifest_sha256, split_manifests, "
                              "filter, validation_fraction, seed, member_count, counts, stats, created_by, "
                              "contains_erased, created_at) VALUES (:id, :ds, 's', 'chat', :h, '{}', '{}', 0.1, '1', "
                              "0, '{}', '{}', 't', 0, CURRENT_TIMESTAMP)"), {"id": snap.hex, "ds": ds.hex, "h": "0" * 64})
            conn.execute(text("INSERT INTO training_runs (id, snapshot_id, expected_manifest_sha256, base_model, method, "
                              "hyperparameters, model_name, metadata, status, metrics, event_count, created_by, "
                              "created_at) VALUES (:id, :s, :h, 'b', 'lora', '{}', :n, '{}', 'succeeded', '{}', 0, "
                              "'t', CURRENT_TIMESTAMP)"), {"id": run.hex, "s": snap.hex, "h": "0" * 64, "n": name})
            conn.execute(text("INSERT INTO registered_models (name, latest_version, created_at) "
                              "VALUES (:n, :v, CURRENT_TIMESTAMP) ON CONFLICT (name) DO UPDATE SET latest_version = :v"),
                         {"n": name, "v": version})
            conn.execute(text("INSERT INTO model_versions (id, name, version, run_id, artifact_uri, artifact_sha256, "
                              "status, created_by, created_at) VALUES (:id, :n, :v, :r, 'u', :h, 'candidate', 't', "
                              "CURRENT_TIMESTAMP)"),
                         {"id": uuid.uuid4().hex, "n": name, "v": version, "r": run.hex, "h": "0" * 64})

        trained(default, "shared", 2)
        trained(team_b, "shared", 1)
        trained(default, "solo", 1)
    command.upgrade(alembic_config(), "head")
    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT name, workspace_id FROM registered_models")).all())
    engine.dispose()
    assert owners == {"shared": team_b.hex, "solo": default.hex}
