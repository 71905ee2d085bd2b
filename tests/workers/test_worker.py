"""A real `celery worker` process against the real Redis and PostgreSQL."""

import time

import orjson
import pytest

from tests.factories import Api, make_keys, new_dataset
from tests.support import start_worker, stop_worker

pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.postgres]


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


def test_worker_rescrubs_after_a_value_is_allowed(worker_env):
    """The re-scrub runs as its own task on queue "pii" in a real worker: the allowed value comes back in a new
    revision, the other example keeps its own."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.pii.tokens import token_key, value_token

    texts = ["Book a table for two in Paris tonight, somewhere near the river.",
             "Please call Maria Schmidt about the unpaid invoice today."]
    proc = start_worker(worker_env)
    try:
        with TestClient(create_app()) as client:
            api = Api(client, make_keys())
            # Paris is a public place, which the default policy keeps: scrub it so there is a value to allow.
            ds = new_dataset(api, pii_policy={"public_entities": "scrub"})
            body = b"\n".join(orjson.dumps({"instruction": t, "output": "Done."}) for t in texts)
            r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                        headers={"Content-Type": "application/x-ndjson"})
            assert r.json()["accepted"] == 2

            def items():
                return api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]

            deadline = time.time() + 60
            while time.time() < deadline and sum(i["status"] == "pending_review" for i in items()) < 2:
                time.sleep(0.3)
            scrubbed = {i["id"]: i["revision"] for i in items()}
            assert all("<" in rev["content"]["instruction"] for rev in scrubbed.values())
            r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/pii-policy/allow-list",
                                        json={"token": value_token(token_key(), "Paris")})
            assert r.status_code == 200 and r.json()["rescrub"]["candidates"] == 1
            deadline = time.time() + 60
            now = {}
            while time.time() < deadline:
                now = {i["id"]: i for i in items()}
                if any(i["revision"]["content"]["instruction"] == texts[0] and i["status"] == "pending_review"
                       for i in now.values()):
                    break
                time.sleep(0.3)
            by_text = {i["revision"]["content"]["instruction"]: i for i in now.values()}
            assert texts[0] in by_text, now
            other = next(i for i in now.values() if i["revision"]["content"]["instruction"] != texts[0])
            assert other["revision"]["id"] == scrubbed[other["id"]]["id"]
            assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]
    finally:
        out = stop_worker(proc)
    assert b"pedigree.pii.rescrub" in out
