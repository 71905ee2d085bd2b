"""The schema comes from Alembic; a model change without a migration fails here."""

import pytest
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


def _value(col, table: str, i: int):
    """A plausible value for a reflected column: the i-th row's, distinct per row where it could be unique."""
    import datetime as dt
    import uuid

    from sqlalchemy import types
    from sqlalchemy.dialects import postgresql

    t = col.type
    if isinstance(t, (postgresql.ENUM, types.Enum)):
        return t.enums[0]
    if isinstance(t, types.ARRAY):
        return []
    if isinstance(t, types.JSON):
        return {}
    if isinstance(t, types.Uuid):
        return uuid.uuid4()
    if isinstance(t, types.Boolean):
        return bool(i % 2)
    if isinstance(t, types.Integer):
        return i + 1
    if isinstance(t, (types.Float, types.Numeric)):
        return 0.5
    if isinstance(t, types.DateTime):
        return dt.datetime(2026, 11, 30, 12, i, tzinfo=dt.UTC)
    if isinstance(t, types.Date):
        return dt.date(2026, 11, 30)
    if isinstance(t, types.LargeBinary):
        return b"\x00" * 12 + bytes([i])
    if isinstance(t, types.String):
        n = t.length
        if isinstance(t, types.CHAR) and n == 32:
            return uuid.uuid4().hex  # SQLite's sa.Uuid
        if n is not None and n < 12:
            return f"{i}"[:n]
        s = f"{i}{uuid.uuid4().hex}-{col.name}-{table}"  # distinct within its first few characters
        return (s * 4)[:n] if n else s
    raise AssertionError(f"no test value for {table}.{col.name} ({t!r})")


def _fill_empty_tables(engine, rows_per_table: int = 2) -> None:
    """Rows in every table that has none yet (each table once, when the migration that made it has run):
    every column filled, nullable ones too, and every foreign key pointing at a real row of its parent,
    so a migration that copies a referenced table finds rows that reference it."""
    from sqlalchemy import MetaData, and_, func, select

    md = MetaData()
    md.reflect(bind=engine)
    with engine.connect() as conn:
        existing = {name: conn.execute(select(func.count()).select_from(t)).scalar_one() for name, t in md.tables.items()}
    # Parents first, by the keys that must be set at insert (examples <-> example_revisions is a cycle
    # only through a nullable key, which the updates below fill once both sides have rows).
    todo = [t for t in md.tables.values() if existing[t.name] == 0 and t.name != "alembic_version"]
    empty = []
    while todo:
        ready = [t for t in todo if not any(
            fk.referred_table in todo and fk.referred_table is not t and not all(c.nullable for c in fk.columns)
            for fk in t.foreign_key_constraints)]
        assert ready, f"a cycle of NOT NULL foreign keys: {[t.name for t in todo]}"
        empty += sorted(ready, key=lambda t: t.name)
        todo = [t for t in todo if t not in ready]
    written: dict[str, list[dict]] = {}
    later = []  # (table, row, fk): a reference to a table whose rows come later in this pass
    with engine.begin() as conn:

        def parent_row(fk, i: int):
            parent = fk.referred_table
            if parent.name in written:
                rows = written[parent.name]
                return rows[i % len(rows)]
            if existing[parent.name]:
                cols = [e.column for e in fk.elements]
                got = conn.execute(select(*cols).order_by(*cols).offset(i % existing[parent.name]).limit(1)).one()
                return dict(zip([c.name for c in cols], got, strict=True))
            return None

        for t in empty:  # parents first, so a child copies its parent's key values
            fk_cols = {c for fk in t.foreign_key_constraints for c in fk.column_keys}
            written[t.name] = []
            for i in range(rows_per_table):
                row = {c.name: _value(c, t.name, i) for c in t.columns if c.name not in fk_cols}
                for fk in t.foreign_key_constraints:
                    src = parent_row(fk, i) if fk.referred_table is not t else None
                    if src is None:
                        if fk.referred_table is not t and not all(c.nullable for c in fk.columns):
                            raise AssertionError(f"{t.name}: parent {fk.referred_table.name} has no rows")
                        later.append((t, row, fk, i))
                        src = {e.column.name: None for e in fk.elements}
                    for e in fk.elements:
                        row[e.parent.name] = src[e.column.name]
                conn.execute(t.insert().values(row))
                written[t.name].append(row)
        for t, row, fk, i in later:
            # A self reference points at the row before (the first row's own key for the first).
            src = written[t.name][max(i - 1, 0)] if fk.referred_table is t else parent_row(fk, i)
            pk = and_(*[c == row[c.name] for c in t.primary_key.columns])
            conn.execute(t.update().where(pk).values({e.parent.name: src[e.column.name] for e in fk.elements}))


def _counts(engine) -> dict[str, int]:
    from sqlalchemy import MetaData, func, select

    md = MetaData()
    md.reflect(bind=engine)
    with engine.connect() as conn:
        return {n: conn.execute(select(func.count()).select_from(t)).scalar_one() for n, t in md.tables.items()}


def _broken_references(engine) -> list:
    from sqlalchemy import MetaData, and_, select

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return list(conn.exec_driver_sql("PRAGMA foreign_key_check").all())
        md = MetaData()
        md.reflect(bind=conn)
        broken = []
        for t in md.tables.values():
            for fk in t.foreign_key_constraints:
                parent = fk.referred_table.alias()
                cond = and_(*[e.parent == parent.c[e.column.name] for e in fk.elements])
                q = (select(*fk.columns).where(and_(*[c.is_not(None) for c in fk.columns]))
                     .where(~select(1).select_from(parent).where(cond).exists()))
                broken += [(t.name, fk.name, tuple(r)) for r in conn.execute(q)]
        return broken


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_migration_keeps_every_row_and_reference(backend, tmp_path, monkeypatch):
    """An installation that has been used since the first revision, upgraded one revision at a time by
    the app's own runner (SQLite: its connections enforce foreign keys). Before each revision every
    table that exists has rows, each foreign key pointing at a real row; after it, no table has lost a
    row and no reference is broken. SQLite alters a table by copying it and dropping the old one, which
    with foreign keys on fails on (or cascades into) the rows of every table that references it:
    priv03's copy of `datasets` on an installation with snapshots."""
    from contextlib import ExitStack

    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from app.core.config import reset_settings
    from app.core.db import get_engine
    from app.core.migrate import alembic_config, upgrade_head
    from tests.support import scratch_database

    stack = ExitStack()
    url = stack.enter_context(scratch_database(backend, tmp_path, "pedigree_mig"))
    monkeypatch.setenv("PEDIGREE_DATABASE_URL", url)
    reset_settings()
    cfg = alembic_config()
    revisions = [s.revision for s in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]
    engine = create_engine(url)  # foreign keys off on SQLite: the fixture's inserts are checked below
    try:
        command.upgrade(cfg, revisions[0])
        for rev in revisions[1:]:
            _fill_empty_tables(engine)
            assert _broken_references(engine) == [], "the fixture itself"
            before = _counts(engine)
            command.upgrade(cfg, rev)
            after = _counts(engine)
            lost = {t: (n, after[t]) for t, n in before.items() if t in after and after[t] < n}
            assert lost == {}, f"{rev} lost rows (before, after): {lost}"
            assert _broken_references(engine) == [], f"{rev} broke references"
        _fill_empty_tables(engine)
        before = _counts(engine)
        upgrade_head()  # the runner as the app calls it: at head, nothing to do and nothing lost
        assert _counts(engine) == before
        if backend == "sqlite":
            with get_engine().connect() as conn:  # the runner gives its connection back enforcing keys
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
        get_engine().dispose()
        stack.close()
