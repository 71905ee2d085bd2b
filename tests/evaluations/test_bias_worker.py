"""The `bias` suite (CrowS-Pairs) run for real, in both places an evaluation runs:

- through a real trainer worker: a uvicorn API on PostgreSQL sends `pedigree.evaluate.run` through Redis
  to a `celery -A trainer.worker worker -Q train` process, which fetches the spec, the `bias_pairs` file
  and the adapter over HTTP and runs `python -m trainer evaluate` on the tiny random model (CPU);
- in-process in the embedded default (SQLite, no Redis): the API's own evaluator thread runs the same child.

Both check the stored results: per-bias-type stereotype scores for base and adapter and their delta, the
overall figures, the noise note; and that `bias.stereotype_score_delta` gates a promotion both ways.
The scores' meaning on a trained adapter is tested in tests/trainer/test_evaluate_bias.py.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import httpx
import pytest

from tests.factories import Api, corpora_file, freeze, ingest, instruction_line, new_dataset, set_status
from tests.support import redis_db_url
from tests.training import test_e2e as training_e2e

pytest.importorskip("torch")
pytest.importorskip("peft")

# The evaluation stacks' Redis slot, per xdist worker (tests/support.py, REDIS_SLOTS); the fixture flushes it.
BROKER = os.environ.get("PEDIGREE_TEST_BIAS_REDIS") or redis_db_url("evaluate")
HP = {"max_steps": 4, "batch_tokens": 1024, "max_seq_len": 256, "log_every": 1, "learning_rate": 1e-2}
PAIRS = 90
tiny_base = training_e2e.tiny_base


def _crows() -> tuple[Path, dict[str, int]]:
    """The shared CrowS-Pairs file, and the pairs per bias type the suite must score with max_pairs=PAIRS and
    seed 0: its documented draw (random.Random(seed).sample) over the rows in the order the API serves them."""
    from app.core.config import reset_settings
    from app.evaluations.corpora import crows_pairs

    path = corpora_file("bias/crows_pairs_anonymized.csv")
    os.environ["PEDIGREE_CROWS_PAIRS_PATH"] = str(path)
    reset_settings()
    try:
        sample = random.Random(0).sample(crows_pairs(), PAIRS)
    finally:
        del os.environ["PEDIGREE_CROWS_PAIRS_PATH"]
        reset_settings()
    counts: dict[str, int] = {}
    for r in sample:
        counts[r["bias_type"]] = counts.get(r["bias_type"], 0) + 1
    return path, counts


def _trained(api: Api, base: str, name: str, wait) -> int:
    ds = new_dataset(api)
    ids = ingest(api, ds, [instruction_line(i) for i in range(12)])
    set_status(ids, "approved")
    snap = freeze(api, ds, validation_fraction=0.25, seed="3")
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": base, "method": "lora", "hyperparameters": HP, "model_name": name})
    assert r.status_code == 201, r.text
    run = wait(r.json()["id"])
    assert run["status"] == "succeeded", run
    return run["model_version"]["version"]


def _check_results(api: Api, name: str, version: int, ev: dict, counts: dict[str, int]) -> None:
    assert ev["status"] == "succeeded", (ev.get("error"), ev)
    b = ev["results"]["bias"]
    assert b["pairs"] == sum(counts.values()) == PAIRS and b["has_adapter"] is True
    assert set(b["by_type"]) == set(counts) and len(counts) >= 8
    for t, v in b["by_type"].items():
        assert v["pairs"] == counts[t]
        for k in ("stereotype_score", "base_stereotype_score"):
            # A share of the type's pairs: k / n for some whole k.
            assert 0 <= v[k] <= 1 and abs(v[k] * v["pairs"] - round(v[k] * v["pairs"])) < 1e-9, (t, v)
        assert v["delta"] == pytest.approx(v["stereotype_score"] - v["base_stereotype_score"])
    assert 0 <= b["stereotype_score"] <= 1 and 0 <= b["base_stereotype_score"] <= 1
    assert b["stereotype_score_delta"] == pytest.approx(b["stereotype_score"] - b["base_stereotype_score"])
    # The overall scores are the pair-weighted means of the per-type ones.
    for k in ("stereotype_score", "base_stereotype_score"):
        assert b[k] == pytest.approx(sum(v[k] * v["pairs"] for v in b["by_type"].values()) / PAIRS)
    assert "Blodgett" in b["noise_note"] and "CrowS-Pairs" in b["dataset"]
    # The gate metric: a bound just below the stored delta refuses production, one at it allows it.
    delta = b["stereotype_score_delta"]
    c = api.as_("curator")
    for bound, status in ((delta - 0.01, 409), (delta, 200)):
        policy = {"gates": [{"metric": "bias.stereotype_score_delta", "max": bound}], "gated_aliases": ["production"]}
        assert c.request("PUT", f"/v1/models/{name}/policy", json=policy).status_code == 200
        r = c.post(f"/v1/models/{name}/aliases/production", json={"version": version})
        assert r.status_code == status, r.text
        if status == 409:
            assert r.json()["error"]["code"] == "gate_failed"
            assert r.json()["error"]["details"][0]["metric"] == "bias.stereotype_score_delta"


@pytest.fixture
def worker_stack(pg, tmp_path, monkeypatch):
    import redis

    from tests.factories import make_keys

    crows, counts = _crows()
    monkeypatch.setattr(training_e2e, "BROKER", BROKER)
    redis.Redis.from_url(BROKER).flushdb()
    st = training_e2e.Stack(pg, tmp_path)
    st.env["PEDIGREE_CROWS_PAIRS_PATH"] = str(crows)
    st.api()
    with httpx.Client(base_url=st.api_url, timeout=60) as client:
        try:
            yield st, Api(client, make_keys()), counts
        finally:
            st.close()
            redis.Redis.from_url(BROKER).flushdb()


@pytest.mark.train
@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.redis
def test_bias_suite_through_the_trainer_worker(worker_stack, tiny_base):
    from tests.evaluations.test_e2e import wait_eval

    st, api, counts = worker_stack
    st.trainer(api.keys["trainer"], "gpu-bias")
    version = _trained(api, tiny_base, "tiny-bias",
                       lambda rid: training_e2e.wait_for(api, rid, {"succeeded", "failed", "cancelled"}))
    r = api.as_("curator").post(f"/v1/models/tiny-bias/versions/{version}/evaluations", json={
        "suites": ["bias"], "params": {"bias": {"max_pairs": PAIRS, "seed": 0}}})
    assert r.status_code == 202, r.text
    ev = wait_eval(api, r.json()["id"], {"succeeded", "failed", "cancelled"})
    assert ev["worker_host"] == __import__("socket").gethostname(), ev
    _check_results(api, "tiny-bias", version, ev, counts)
    kinds = {e["kind"] for e in api.as_("auditor").get(f"/v1/evaluations/{ev['id']}/events",
                                                       params={"limit": 1000}).json()["items"]}
    assert {"log", "metrics"} <= kinds
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True


@pytest.mark.train
@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_bias_suite_in_process_in_the_embedded_default(db, api, artifact_root, tiny_base, tmp_path, monkeypatch):
    from app.core.config import get_settings, reset_settings
    from app.evaluations import embedded as embedded_evaluations
    from app.training import embedded

    crows, counts = _crows()
    monkeypatch.setenv("PEDIGREE_CROWS_PAIRS_PATH", str(crows))
    reset_settings()
    assert get_settings().tasks_eager  # no Redis: no worker would take the evaluation

    def wait_run(rid: str) -> dict:
        embedded.wait(rid, timeout=300)
        return api.as_("auditor").get(f"/v1/training-runs/{rid}").json()

    version = _trained(api, tiny_base, "embedded-bias", wait_run)
    r = api.as_("curator").post(f"/v1/models/embedded-bias/versions/{version}/evaluations", json={
        "suites": ["bias"], "params": {"bias": {"max_pairs": PAIRS, "seed": 0}}})
    assert r.status_code == 202, r.text
    eid = r.json()["id"]
    embedded_evaluations.wait(eid, timeout=300)
    deadline = time.time() + 30
    ev = api.as_("auditor").get(f"/v1/evaluations/{eid}").json()
    while ev["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        ev = api.as_("auditor").get(f"/v1/evaluations/{eid}").json()
    assert ev["worker_host"].startswith("embedded:"), ev
    _check_results(api, "embedded-bias", version, ev, counts)
