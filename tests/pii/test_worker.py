"""A real celery worker scrubbing through Redis and PostgreSQL, killed mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from tests.factories import Api, make_keys, new_dataset
from tests.support import start_worker

pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.postgres]

N = 400


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _locked_at_pii(conn) -> bool:
    """True while a worker holds the pii batch (its rows are locked FOR UPDATE)."""
    total = conn.execute(text("SELECT count(*) FROM examples WHERE stage = 'pii'")).scalar()
    free = conn.execute(text("SELECT count(*) FROM (SELECT id FROM examples WHERE stage = 'pii' "
                             "FOR UPDATE SKIP LOCKED) t")).scalar()
    conn.rollback()
    return total > 0 and free < total


def test_worker_killed_mid_batch_redelivers_without_double_revisions(worker_env):
    from fastapi.testclient import TestClient

    from app.core.db import get_engine
    from app.main import create_app

    proc = start_worker(worker_env, queues="default,pii,dedup", name="pii1")
    try:
        with TestClient(create_app()) as client:
            api = Api(client, make_keys())
            ds = new_dataset(api, "chat")
            body = b"\n".join(orjson.dumps({"messages": [
                {"role": "user", "content": f"I'm Maria Garcia #{i}, mail maria{i}@example.org or call "
                                            f"212-555-{i:04d}. " + "Some ordinary words follow here, and then some more. " * 60},
                {"role": "assistant", "content": f"Thanks Maria Garcia, I wrote to maria{i}@example.org."},
            ]}) for i in range(N))
            r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                        headers={"Content-Type": "application/x-ndjson"})
            assert r.json()["accepted"] == N

            killed = False
            deadline = time.time() + 180
            with get_engine().connect() as conn:
                while time.time() < deadline and not killed:
                    if _locked_at_pii(conn):
                        for child in _children(proc.pid):  # the prefork pool process running the batch
                            os.kill(child, signal.SIGKILL)
                            killed = True
                    time.sleep(0.05)
            assert killed, "never saw the pii batch in progress"

            counts: dict = {}
            deadline = time.time() + 180
            while time.time() < deadline:
                counts = api.as_("auditor").get(f"/v1/datasets/{ds['id']}").json()["counts"]
                if counts["pending_review"] == N:
                    break
                time.sleep(0.5)
            assert counts["pending_review"] == N, counts
            with get_engine().connect() as conn:
                per_example = conn.execute(text(
                    "SELECT count(*) FILTER (WHERE reason = 'pii_scrub') AS n FROM example_revisions "
                    "GROUP BY example_id")).scalars().all()
                assert sorted(set(per_example)) == [1] and len(per_example) == N
                assert conn.execute(text("SELECT count(*) FROM pii_scrubs")).scalar() == N
                assert conn.execute(text("SELECT count(*) FROM pii_vault")).scalar() == N
            ex = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples?limit=1").json()["items"][0]
            assert "maria" not in orjson.dumps(ex["revision"]["content"]).decode().lower()
            assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out.decode(errors="replace")[-6000:])
    assert b"pedigree.pipeline.run_stage" in out


def test_worker_refuses_to_start_without_the_model(worker_env):
    env = {**worker_env, "PEDIGREE_PII_SPACY_MODEL": "xx_no_such_model_sm"}
    proc = start_worker(env, queues="pii", name="pii2")
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("worker started without its spaCy model")
    assert proc.returncode != 0
    assert b"xx_no_such_model_sm" in out and b"pattern_only" in out
