"""A real `celery worker` process against the real Redis and PostgreSQL."""

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from tests.conftest import Api, make_keys, new_dataset

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.postgres]


def start_worker(env: dict[str, str], queues: str = "default,pii,dedup", name: str = "w1") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
           "--concurrency", "1", "--pool", "prefork", "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
           "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture
def worker_env(pg, redis_url, monkeypatch):
    # One Redis database per xdist worker, so parallel runs never flush each other's queues.
    n = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    url = redis_url.rsplit("/", 1)[0] + f"/{7 + n}"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("PEDIGREE_REDIS_URL", url)
    monkeypatch.setenv("PEDIGREE_EMBEDDED", "false")
    from app.core.config import reset_settings

    reset_settings()
    from app.core import jobs

    jobs.celery_client.cache_clear()
    env = {**os.environ, "PEDIGREE_DATABASE_URL": pg, "PEDIGREE_REDIS_URL": url, "PEDIGREE_EMBEDDED": "false"}
    yield env
    redis.Redis.from_url(url).flushdb()


def test_worker_runs_the_pipeline(worker_env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    proc = start_worker(worker_env)
    try:
        with TestClient(create_app()) as client:
            api = Api(client, make_keys())
            ds = new_dataset(api)
            body = b"\n".join(orjson.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(30))
            r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                        headers={"Content-Type": "application/x-ndjson"})
            assert r.json()["accepted"] == 30
            deadline = time.time() + 60
            counts = {}
            while time.time() < deadline:
                counts = api.as_("auditor").get(f"/v1/datasets/{ds['id']}").json()["counts"]
                if counts["pending_review"] == 30:
                    break
                time.sleep(0.3)
            assert counts["pending_review"] == 30, counts
            ex = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples?limit=1").json()["items"][0]
            assert ex["quality"]["chars"] > 0
            assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert b"pedigree.pipeline.run_stage" in out
