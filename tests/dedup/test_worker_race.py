"""Two real `celery worker` processes dedup near-duplicates that arrive at the same moment, against the real
Redis index and PostgreSQL: every pair must end up in one cluster with exactly one canonical member."""

import random
import time
import uuid

import orjson
import pytest
from sqlalchemy import func, select

from app.core.db import session_scope
from app.models.dedup import DedupPair
from app.models.example import DuplicateLink, Example
from tests.factories import Api, make_keys, new_dataset
from tests.support import celery_env, start_worker, stop_worker

pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.postgres]
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def worker_env(pg, redis_url, monkeypatch):
    # Its own Redis database (broker and index): see tests/support.py for who holds which.
    with celery_env(pg, monkeypatch, "dedup_race") as env:
        yield env


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(n)]


def near(text: str, i: int) -> str:
    words = text.split()
    words[-1 - (i % 2)] = f"edit{i}"  # at most 2 of 56 shingles change: Jaccard > 0.9
    return " ".join(words)


def test_two_workers_racing_on_near_duplicates_link_every_pair(worker_env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    n = 300
    base = texts(n, seed=5)
    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        ds = new_dataset(api, pii_policy={"enabled": False})
        # Both imports are queued before any worker runs, so the two workers take one each and reach the
        # dedup stage together: near_i is claimed in Redis while base_i is being claimed by the other.
        for rows in ([{"instruction": "q", "output": t, "provenance": {"source": "a", "source_ref": str(i)}}
                      for i, t in enumerate(base)],
                     [{"instruction": "q", "output": near(t, i), "provenance": {"source": "b", "source_ref": str(i)}}
                      for i, t in enumerate(base)]):
            body = b"\n".join(orjson.dumps(r) for r in rows)
            r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON)
            assert r.json()["accepted"] == n, r.text
        procs = [start_worker(worker_env, name="w1"), start_worker(worker_env, name="w2")]
        try:
            deadline = time.time() + 180
            counts: dict = {}
            while time.time() < deadline:
                counts = api.as_("auditor").get(f"/v1/datasets/{ds['id']}").json()["counts"]
                if counts["pending_review"] + counts["duplicate"] == 2 * n:
                    break
                time.sleep(0.5)
            assert counts["pending_review"] == n and counts["duplicate"] == n, counts
            page = api.as_("curator").get(f"/v1/datasets/{ds['id']}/duplicates?limit=1000").json()
        finally:
            logs = [stop_worker(p) for p in procs]
    assert all(b"pedigree.pipeline.run_stage" in out for out in logs), "both workers must have taken batches"
    assert len(page["clusters"]) == n and all(c["size"] == 2 for c in page["clusters"])
    with session_scope() as s:
        src = dict(s.execute(select(Example.id, Example.source_ref + ":" + Example.source)).all())
        links = s.execute(select(DuplicateLink.example_id, DuplicateLink.canonical_example_id)
                          .where(DuplicateLink.dataset_id == uuid.UUID(ds["id"]))).all()
        assert len(links) == n
        for dup, canon in links:
            assert src[dup].split(":")[0] == src[canon].split(":")[0]  # base_i with near_i, never another i
        assert s.scalar(select(func.count()).select_from(DedupPair)) == n


def test_an_eval_item_after_the_training_text_is_found_by_the_sweep_task(worker_env):
    """The containment sweep runs as a real task on the dedup queue: training texts first, then an
    evaluation item they contain; the worker's sweep flags them (and leaves the clean ones)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    item = texts(1, seed=9)[0]
    fill = texts(8, seed=10)
    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        train = new_dataset(api, pii_policy={"enabled": False})
        evalset = new_dataset(api, is_eval_set=True, pii_policy={"enabled": False})
        rows = [{"instruction": "q", "output": f"{fill[i]} {item} {fill[i + 1]}" if i < 3 else fill[i],
                 "provenance": {"source": "t", "source_ref": f"t{i}"}} for i in range(6)]
        body = b"\n".join(orjson.dumps(r) for r in rows)
        assert api.as_("curator").post(f"/v1/datasets/{train['id']}/examples:import", content=body,
                                       headers=NDJSON).json()["accepted"] == 6
        proc = start_worker(worker_env, name="w1")
        try:
            deadline = time.time() + 120
            while time.time() < deadline and \
                    api.as_("auditor").get(f"/v1/datasets/{train['id']}").json()["counts"].get("pending_review") != 6:
                time.sleep(0.3)
            r = api.as_("curator").post(f"/v1/datasets/{evalset['id']}/examples", json=[
                {"instruction": "q", "output": item, "provenance": {"source": "e", "source_ref": "e0"}}])
            assert r.status_code == 201, r.text
            flagged: dict = {}
            while time.time() < deadline:
                # Admin: the one role that reads source refs as stored (docs/pii.md).
                items = api.as_("admin").get(f"/v1/datasets/{train['id']}/examples?limit=10").json()["items"]
                flagged = {i["provenance"]["source_ref"]: i["contaminates_eval"] for i in items}
                if sum(flagged.values()) >= 3:
                    break
                time.sleep(0.3)
        finally:
            out = stop_worker(proc)
    assert flagged == {"t0": True, "t1": True, "t2": True, "t3": False, "t4": False, "t5": False}, flagged
    assert b"pedigree.dedup.eval_sweep" in out
