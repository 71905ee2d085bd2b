"""GET /readyz against the real databases and Redis: each check named, a failing one turning the answer
into a 503 that says which; /healthz stays liveness only. The compose healthchecks use them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.config import reset_settings
from app.ops import readiness

ROOT = Path(__file__).resolve().parents[2]
CHECKS = {"database", "redis", "migrations", "vault"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the block ends: nothing listens there


def test_ready_on_both_databases_and_healthz_is_liveness(api):
    r = api.client.get("/readyz")  # no key: orchestrators probe it
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and set(body["checks"]) == CHECKS
    assert all(c["ok"] for c in body["checks"].values())
    assert body["checks"]["redis"]["configured"] is False  # the db fixture runs without a broker
    mig = body["checks"]["migrations"]
    assert mig["current"] == mig["head"] == list(readiness.code_heads()) and mig["head"]
    assert api.client.get("/healthz").json() == {"ok": True}


def test_a_database_behind_the_code_is_not_ready(api, db):
    # The schema as a previous deploy left it: alembic_version names the revision before head.
    from alembic.script import ScriptDirectory

    from app.core.db import get_engine
    from app.core.migrate import alembic_config

    [head] = readiness.code_heads()
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(head).down_revision
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": previous})
    try:
        r = api.client.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["ok"] is False and body["failing"] == ["migrations"]
        assert body["checks"]["migrations"] == {**body["checks"]["migrations"], "ok": False,
                                                "current": [previous], "head": [head]}
        assert body["checks"]["database"]["ok"] and body["checks"]["vault"]["ok"]
        assert body["error"]["code"] == "not_ready" and "migrations" in body["error"]["message"]
        assert body["error"]["details"][0]["check"] == "migrations"
    finally:
        with get_engine().begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert api.client.get("/readyz").status_code == 200


@pytest.mark.postgres
@pytest.mark.redis
def test_redis_configured_then_unreachable(pg, redis_url, monkeypatch):
    from app.main import create_app
    from tests.conftest import _use_db

    _use_db(pg, redis_url)
    try:
        with TestClient(create_app()) as client:
            r = client.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["checks"]["redis"] == {**r.json()["checks"]["redis"], "ok": True, "configured": True}
            # The broker goes away (here: a URL where nothing listens). The answer names it and nothing else,
            # and says only the error's type: the endpoint has no key, a driver's message names hosts.
            monkeypatch.setenv("PEDIGREE_REDIS_URL", f"redis://127.0.0.1:{_closed_port()}/0")
            reset_settings()
            r = client.get("/readyz")
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["failing"] == ["redis"]
            assert body["checks"]["redis"]["ok"] is False
            assert body["checks"]["redis"]["error"] == "ConnectionError"
            assert "127.0.0.1" not in r.text
            assert client.get("/healthz").status_code == 200  # liveness is not readiness
    finally:
        _use_db(pg)


@pytest.mark.postgres
def test_database_down_names_it_and_skips_what_needs_it(pg, monkeypatch):
    from app.main import create_app

    with TestClient(create_app()) as client:
        monkeypatch.setenv("PEDIGREE_DATABASE_URL",
                           f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/pedigree")
        reset_settings()
        r = client.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["failing"] == ["database", "migrations", "vault"]
    assert body["checks"]["migrations"]["error"] == "skipped: database unavailable"
    assert body["checks"]["redis"]["ok"] is True


def test_a_vault_key_that_is_gone_is_not_ready(api):
    # A vault row sealed with a key the ring no longer holds: reveals and erasure would fail.
    import uuid

    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models.example import ExampleRevision
    from app.models.pii import PiiVaultEntry
    from tests.factories import ingest, instruction_line, new_dataset

    [eid] = ingest(api, new_dataset(api), [instruction_line(0)])
    with session_scope() as s:
        rev = s.scalar(select(ExampleRevision).where(ExampleRevision.example_id == uuid.UUID(eid)))
        s.add(PiiVaultEntry(example_id=rev.example_id, revision_id=rev.id, key_id="retired", ciphertext=b"x"))
    readiness._vault_ok_until = 0.0  # a pass is remembered for a minute; this test wants the fresh answer
    r = api.client.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["failing"] == ["vault"] and r.json()["checks"]["vault"]["error"] == "VaultKeyMissing"
    assert "retired" not in r.text


def test_compose_healthchecks_probe_readiness():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/readyz" in " ".join(services["worker"]["healthcheck"]["test"])
    assert services["worker"]["environment"]["PEDIGREE_METRICS_PORT"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert os.path.exists(ROOT / "deploy" / "prometheus" / "alerts.yml")
