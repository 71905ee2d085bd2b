"""Evaluations with real processes: a uvicorn API on PostgreSQL sending `pedigree.evaluate.run` through
Redis to a real `celery -A trainer.worker worker -Q train` process, which claims the evaluation, downloads
its spec, files and adapter over HTTP, runs `python -m trainer evaluate` on the tiny model (CPU) and
reports the four suites' results; the gated promotion then goes through.

Then the fault: the trainer is killed mid-evaluation (SIGKILL to its process group), the reaper fails
the evaluation as worker_lost, nothing partial is shown or counted by a gate, and the dead worker's late
report is refused.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.factories import Api, export_records, freeze, ingest, instruction_line, new_dataset, set_status
from tests.support import redis_db_url
from tests.training import test_e2e as training_e2e

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("scipy")
pytestmark = [pytest.mark.train, pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]

# A Redis slot apart from the training stacks' (tests/support.py, REDIS_SLOTS), per xdist worker.
BROKER = os.environ.get("PEDIGREE_TEST_EVAL_REDIS") or redis_db_url("evaluate")
tiny_base = training_e2e.tiny_base
HP = {"max_steps": 6, "batch_tokens": 1024, "max_seq_len": 256, "log_every": 1, "learning_rate": 1e-2}
SMALL = {"heldout": {"generation_examples": 4, "max_new_tokens": 8, "max_examples": 16},
         "memorization": {"candidates": 64}, "pii_extraction": {"samples": 1, "max_new_tokens": 24},
         "membership": {"max_examples": 16}}


@pytest.fixture
def stack(pg, tmp_path, monkeypatch):
    import httpx
    import redis

    from tests.factories import make_keys

    monkeypatch.setattr(training_e2e, "BROKER", BROKER)
    redis.Redis.from_url(BROKER).flushdb()
    st = training_e2e.Stack(pg, tmp_path)
    st.api()
    with httpx.Client(base_url=st.api_url, timeout=60) as client:
        try:
            yield st, Api(client, make_keys())
        finally:
            st.close()
            redis.Redis.from_url(BROKER).flushdb()


def wait_eval(api: Api, eid: str, statuses: set[str], timeout: float = 420, min_events: int = 0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ev = api.as_("auditor").get(f"/v1/evaluations/{eid}").json()
        if ev["status"] in statuses and ev["event_count"] >= min_events:
            return ev
        time.sleep(1)
    raise AssertionError(f"evaluation {eid} still {ev['status']} after {timeout}s: {ev}")


def test_evaluation_through_the_trainer_worker_then_killed_mid_evaluation(stack, tiny_base):
    st, api = stack
    ds = new_dataset(api)
    lines = [instruction_line(i, text_=f"Write to alice.quill{i}@example.com about invoice {i}.") for i in range(16)]
    ids = ingest(api, ds, lines)
    set_status(ids, "approved")
    # Stratified (one stratum: no `lang:` tags): 4 validation members every run. The plain split hashes
    # each fresh example id and left all 16 in train about one run in a hundred; membership then has no
    # non-members (the CI failure: the evaluation `failed` with `invalid_data`; now a 422 at creation).
    snap = freeze(api, ds, validation_fraction=0.25, seed="3", stratify_by="lang")
    assert snap["counts"]["validation"] == 4 and snap["counts"]["train"] == 12
    evs = new_dataset(api, is_eval_set=True)
    ingest(api, evs, [instruction_line(100 + i, source="evalset") for i in range(4)])

    worker = st.trainer(api.keys["trainer"], "gpu-a")
    run = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": tiny_base, "method": "lora", "hyperparameters": HP,
        "model_name": "tiny-eval", "canaries": {"count": 2, "repetitions": [1, 8]}})
    assert run.status_code == 201, run.text
    done = training_e2e.wait_for(api, run.json()["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", (done, (st.tmp / "gpu-a.log").read_text()[-3000:])
    # After training a reviewer flags an address the scrubber never saw (no CPU worker runs here):
    # it is vaulted, and the evaluation probes the trained revision's raw text for it.
    recs, _ = export_records(api, snap["id"])
    train_examples = sorted({r["example_id"] for r in recs if r["split"] == "train"})
    flagged = 0
    for eid_ in train_examples[:4]:
        ex = api.as_("curator").get(f"/v1/examples/{eid_}").json()
        text = ex["revision"]["content"]["instruction"]
        at = text.index("alice.quill")
        end = text.index(" about")
        r = api.as_("curator").post(f"/v1/examples/{eid_}/pii-findings", json={
            "field_path": "instruction", "start": at, "end": end, "entity_type": "EMAIL_ADDRESS"})
        assert r.status_code in (200, 201), r.text
        flagged += 1

    c = api.as_("curator")
    policy = {"gates": [{"metric": "membership.auc", "max": 1.0}, {"metric": "memorization.max_exposure", "max": 100},
                        {"metric": "pii_extraction.rate", "max": 1.0}], "gated_aliases": ["production"]}
    assert c.request("PUT", "/v1/models/tiny-eval/policy", json=policy).status_code == 200
    assert c.post("/v1/models/tiny-eval/aliases/production", json={"version": 1}).status_code == 409

    t0 = time.time()
    r = c.post("/v1/models/tiny-eval/versions/1/evaluations", json={
        "suites": ["heldout", "memorization", "pii_extraction", "membership"], "eval_sets": [evs["name"]],
        "reference": evs["id"], "params": SMALL})
    assert r.status_code == 202, r.text
    eid = r.json()["id"]
    ev = wait_eval(api, eid, {"succeeded", "failed", "cancelled"})
    took = time.time() - t0
    assert ev["status"] == "succeeded", (ev.get("error"), ev, (st.tmp / "gpu-a.log").read_text()[-4000:])
    res = ev["results"]
    assert ev["worker_host"] == __import__("socket").gethostname()
    h, m, p, mi = res["heldout"], res["memorization"], res["pii_extraction"], res["membership"]
    assert h["validation_loss"] > 0 and h["base_validation_loss"] > 0
    assert h["eval_sets"][evs["name"]]["generation"]["examples"] == 4 and h["forgetting"]["delta"] is not None
    assert set(m["exposure_by_repetitions"]) == {"1", "8"} and m["max_exposure"] >= 0
    assert p["probed"] == flagged and 0 <= p["rate"] <= 1 and p["by_entity_type"]["EMAIL_ADDRESS"]["probed"] == flagged
    assert 0 <= mi["auc"] <= 1
    # Secrets and raw values never leave the evaluation's temp dir.
    import json

    secrets = [x["secret"] for x in api.as_("trainer").get(f"/v1/training-runs/{done['id']}").json()["canaries"]]
    shown = json.dumps(ev) + api.as_("auditor").get(f"/v1/evaluations/{eid}/events",
                                                    params={"limit": 1000}).text
    assert not any(s in shown for s in secrets) and "alice.quill" not in shown
    kinds = {e["kind"] for e in api.as_("auditor").get(f"/v1/evaluations/{eid}/events",
                                                       params={"limit": 1000}).json()["items"]}
    assert {"log", "metrics"} <= kinds
    lin = api.as_("auditor").get("/v1/lineage/models/tiny-eval/versions/1").json()
    assert lin["evaluations"][0]["id"] == eid
    assert c.post("/v1/models/tiny-eval/aliases/production", json={"version": 1}).status_code == 200
    print(f"\nend-to-end evaluation (API + Redis + celery trainer, 4 suites, tiny model, CPU): {took:.1f}s")

    # --- kill the trainer mid-evaluation ----------------------------------------------------------
    from app.core.db import session_scope
    from app.training.reaper import reap

    r = c.post("/v1/models/tiny-eval/versions/1/evaluations", json={
        "suites": ["membership", "memorization"], "params": {"memorization": {"candidates": 2_000_000}}})
    long = r.json()["id"]
    # Membership finishes first (its metrics event), then the long exposure ranking is under way: the
    # worker dies holding one suite's figures and none of the other's.
    deadline = time.time() + 300
    while time.time() < deadline:
        events = api.as_("auditor").get(f"/v1/evaluations/{long}/events", params={"limit": 1000}).json()["items"]
        if any(e["kind"] == "metrics" and (e["data"] or {}).get("suite") == "membership" for e in events):
            break
        time.sleep(1)
    else:
        raise AssertionError((st.tmp / "gpu-a.log").read_text()[-3000:])
    st.kill(worker)
    time.sleep(1.5)
    with session_scope() as s:
        reap(s, stale_after_s=1.0)
    lost = api.as_("auditor").get(f"/v1/evaluations/{long}").json()
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost" and lost["results"] == {}
    # A late report from the dead worker, with figures that would pass, is refused and never shown.
    t = api.as_("trainer")
    r = t.post(f"/v1/evaluations/{long}/complete", json={"results": {"membership": {"auc": 0.5},
                                                                     "memorization": {"max_exposure": 0.0}}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "evaluation_finished"
    assert t.post(f"/v1/evaluations/{long}/events", json={"events": [{"kind": "heartbeat"}]}).status_code == 409
    assert api.as_("auditor").get(f"/v1/evaluations/{long}").json()["results"] == {}
    items = api.as_("auditor").get("/v1/models/tiny-eval/versions/1/evaluations").json()["items"]
    assert [(i["id"], i["status"]) for i in items] == [(long, "failed"), (eid, "succeeded")]
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True
