"""Test fixtures: real databases built by the migrations, real Redis, real processes.

Data-layer tests take the `db` fixture, parametrised over SQLite (the embedded default) and
PostgreSQL (production). Each PostgreSQL test run gets its own database, built once by
`alembic upgrade head`; between tests the tables are truncated (the app opens its own sessions and
commits, so a rolled-back outer transaction cannot isolate it).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from tests.factories import Api, make_keys
from tests.support import redis_db_url

PG_ADMIN_URL = os.environ.get("PEDIGREE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = redis_db_url("plain")  # this xdist worker's own (tests/support.py, REDIS_SLOTS)

# Tests never run with a developer's own settings.
for _k in [k for k in os.environ if k.startswith("PEDIGREE_") and not k.startswith("PEDIGREE_TEST")]:
    del os.environ[_k]
os.environ["PEDIGREE_SECRET_KEY"] = "test-secret-key-0123456789abcdef"
# Every test client is one address ("testclient") and the role matrix alone sends hundreds of refused
# keys: throttling is off here except where tests/keys/test_lifecycle.py lowers the limit on purpose.
os.environ["PEDIGREE_AUTH_FAILURE_LIMIT"] = "1000000000"

# A response field its route's model does not declare fails the request here (in production it is a
# warning): the OpenAPI document then states every field the tests see.
from app.core import schemas as _schemas

_schemas.STRICT = True


@pytest.fixture(scope="session", autouse=True)
def wired() -> None:
    """The suite is an entry point like the API, the worker and the CLI: it wires the registries once."""
    from app.wiring import wire

    wire()


@pytest.fixture(scope="session", autouse=True)
def model_roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny or fake base model a test makes lives under pytest's temporary folder: make it the one
    model root, so the API accepts them and nothing else (processes started by tests inherit it)."""
    root = tmp_path_factory.getbasetemp().resolve()
    os.environ["PEDIGREE_MODEL_ROOTS"] = str(root)
    from app.core.config import reset_settings

    reset_settings()
    return root


def _worker_suffix() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"pedigree_test_{_worker_suffix()}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    _use_db(url)
    from app.core.migrate import upgrade_head

    upgrade_head()
    yield url
    from app.core.auth import USES
    from app.core.db import _engine_for

    USES.forget()  # last-used notes for keys of a database about to be dropped
    _engine_for.cache_clear()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    _use_db(f"sqlite:///{path}")
    from app.core.migrate import upgrade_head

    upgrade_head()
    from app.core.db import get_engine

    get_engine().dispose()
    return path


def _use_db(url: str, redis_url: str | None = None) -> None:
    os.environ["PEDIGREE_DATABASE_URL"] = url
    if redis_url:
        os.environ["PEDIGREE_REDIS_URL"] = redis_url
    else:
        os.environ.pop("PEDIGREE_REDIS_URL", None)
    # Test databases are throwaway: allow the embedded conveniences (and its default key files).
    os.environ["PEDIGREE_EMBEDDED"] = "false" if redis_url else "true"
    from app.core.config import reset_settings

    reset_settings()


def truncate_all(url: str) -> None:
    from app.core.db import get_engine
    from app.models import Base

    tables = [t.name for t in Base.metadata.sorted_tables if t.name != "audit_head"]
    with get_engine().begin() as conn:
        if url.startswith("postgresql"):
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for t in reversed(tables):
                conn.execute(text(f"DELETE FROM {t}"))
        conn.execute(text("UPDATE audit_head SET seq = 0, hash = :h WHERE id = 1"), {"h": "0" * 64})
        # The migration's `default` workspace is data too: put it back as a fresh install has it.
        from app.models.auth import Workspace

        conn.execute(Workspace.__table__.insert().values(id=uuid.uuid4(), name="default", created_by="migration priv03"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A clean database, on both backends. Yields the URL; settings point at it."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "pedigree.db"
        shutil.copy(template, path)
        url = f"sqlite:///{path}"
        _use_db(url)
        yield url
        from app.core.db import get_engine

        get_engine().dispose()
    else:
        url = request.getfixturevalue("pg_url")
        _use_db(url)
        truncate_all(url)
        yield url


@pytest.fixture
def pg(pg_url: str) -> Iterator[str]:
    """PostgreSQL only (concurrency, SKIP LOCKED, real workers)."""
    _use_db(pg_url)
    truncate_all(pg_url)
    yield pg_url


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    r.ping()
    yield REDIS_URL


@pytest.fixture
def api(db: str) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as client:
        yield Api(client, make_keys())


@pytest.fixture
def pg_api(pg: str) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as client:
        yield Api(client, make_keys())


# Training fixtures shared by the training, lineage, security and faults suites.
@pytest.fixture
def artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("PEDIGREE_ARTIFACT_ROOT", str(root))
    from app.core.config import reset_settings

    reset_settings()
    return root


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records what would be sent to the `train` queue instead of training (or evaluating) in-process,
    so API tests drive the trainer's protocol by hand."""
    from app.core import jobs

    sent: list[tuple] = []
    monkeypatch.setitem(jobs.LOCAL_HANDLERS, "pedigree.train.run", lambda *a: sent.append(a))
    monkeypatch.setitem(jobs.LOCAL_HANDLERS, "pedigree.evaluate.run", lambda *a: None)
    return sent


@pytest.fixture
def base_model(tmp_path: Path) -> str:
    """A folder that passes the API's local check (the trainer is not run in these tests)."""
    p = tmp_path / "base-model"
    p.mkdir()
    (p / "config.json").write_text("{}")
    return str(p)


@pytest.fixture
def worker_env(pg, redis_url, monkeypatch):
    """Environment for a real Celery worker process on the test's PostgreSQL and Redis (tests.support
    starts and stops it); suites that race several workers use their own Redis database index."""
    from tests.support import celery_env

    with celery_env(pg, monkeypatch, "workers") as env:
        yield env
