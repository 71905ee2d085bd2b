"""A real `celery worker` process against the real Redis and PostgreSQL."""

import time

import orjson
import pytest

from tests.factories import Api, make_keys, new_dataset
from tests.support import celery_env, start_worker, stop_worker

pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def worker_env(pg, redis_url, monkeypatch):
    with celery_env(pg, redis_url, monkeypatch, db_base=7) as env:
        yield env


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
        out = stop_worker(proc)
    assert b"pedigree.pipeline.run_stage" in out
