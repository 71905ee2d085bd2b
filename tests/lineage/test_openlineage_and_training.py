"""OpenLineage events on a local HTTP receiver, and erasure against runs registered through the real
training protocol (the trainer's side driven by hand, as tests/training does)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.core.config import reset_settings
from app.lineage import openlineage
from tests.factories import complete_body, fake_artifact, snapshot

HP = {"epochs": 1, "max_steps": 3}


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch):
    events: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            events.append({"path": self.path, **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("PEDIGREE_OPENLINEAGE_URL", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("PEDIGREE_OPENLINEAGE_NAMESPACE", "pedigree-test")
    reset_settings()  # settings are read once; the receiver's address is new
    yield events
    monkeypatch.delenv("PEDIGREE_OPENLINEAGE_URL")
    monkeypatch.delenv("PEDIGREE_OPENLINEAGE_NAMESPACE")
    reset_settings()
    srv.shutdown()


def _drain(events: list[dict]) -> list[dict]:
    assert openlineage.flush(15)
    return events


def _train(api, snap, recs, base_model, artifact_root, name="faq-bot"):
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                           "method": "lora", "hyperparameters": HP, "model_name": name})
    assert r.status_code == 201, r.text
    run = r.json()
    assert api.as_("trainer").post(f"/v1/training-runs/{run['id']}/start",
                                   json={"worker_host": "gpu-1"}).status_code == 200
    uri, sha = fake_artifact(artifact_root, name, run["id"])
    r = api.as_("trainer").post(f"/v1/training-runs/{run['id']}/complete", json=complete_body(recs, uri, sha))
    assert r.status_code == 200, r.text
    return run, api.as_("auditor").get(f"/v1/training-runs/{run['id']}").json()


def test_snapshot_freeze_and_training_run_events(api, receiver, dispatched, base_model, artifact_root):
    snap, recs = snapshot(api)
    events = _drain(receiver)
    freeze_events = [e for e in events if e["job"]["name"].endswith(".freeze")]
    assert [e["eventType"] for e in freeze_events] == ["START", "COMPLETE"]
    start, done = freeze_events
    assert start["run"]["runId"] == done["run"]["runId"] and done["job"]["namespace"] == "pedigree-test"
    assert events[0]["path"] == "/api/v1/lineage"
    [out] = done["outputs"]
    assert out["facets"]["version"]["datasetVersion"] == snap["manifest_sha256"]
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == snap["member_count"]
    assert done["inputs"][0]["name"] == out["name"].split("/snapshots/")[0]

    # A freeze that fails (the name is taken) is START then FAIL, with the error.
    receiver.clear()
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": snap["dataset_id"], "name": snap["name"]})
    assert r.status_code == 409
    failed = _drain(receiver)
    assert [e["eventType"] for e in failed] == ["START", "FAIL"]
    assert "name" in failed[1]["run"]["facets"]["errorMessage"]["message"]

    receiver.clear()
    run, got = _train(api, snap, recs, base_model, artifact_root)
    train = [e for e in _drain(receiver) if e["job"]["name"] == "faq-bot.train"]
    assert [e["eventType"] for e in train] == ["START", "COMPLETE"]
    assert {e["run"]["runId"] for e in train} == {run["id"]}
    assert train[1]["inputs"][0]["facets"]["version"]["datasetVersion"] == snap["manifest_sha256"]
    assert train[1]["outputs"][0]["name"] == "models/faq-bot"
    assert train[1]["outputs"][0]["facets"]["version"]["datasetVersion"] == str(got["model_version"]["version"])

    receiver.clear()
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                           "hyperparameters": HP, "model_name": "faq-bot"})
    rid = r.json()["id"]
    api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "gpu-1"})
    api.as_("trainer").post(f"/v1/training-runs/{rid}/fail", json={"code": "oom", "message": "CUDA out of memory"})
    fail = [e for e in _drain(receiver) if e["run"]["runId"] == rid]
    assert [e["eventType"] for e in fail] == ["START", "FAIL"]
    assert "out of memory" in fail[1]["run"]["facets"]["errorMessage"]["message"]


def test_no_events_without_a_url(api, dispatched):
    assert not openlineage.enabled()
    snapshot(api, n=4)  # nothing to assert beyond "does not try to send": no receiver exists


def test_erasure_taints_registered_versions_and_blocks_promotion(api, dispatched, base_model, artifact_root):
    snap, recs = snapshot(api)
    _run1, got1 = _train(api, snap, recs, base_model, artifact_root)
    _run2, got2 = _train(api, snap, recs, base_model, artifact_root)
    assert api.as_("curator").post("/v1/models/faq-bot/aliases/production",
                                   json={"version": 2, "reason": "best eval"}).status_code == 200
    trained = [r for r in recs if r["split"] == "train"]
    # The per-version counts were written after each run's commit, and answer the license lookup.
    from sqlalchemy import func, select

    from app.core.db import session_scope
    from app.models.lineage import ModelVersionFacet

    with session_scope() as s:
        marks = s.scalar(select(func.count()).select_from(ModelVersionFacet).where(ModelVersionFacet.facet == "*"))
    assert marks == 2
    lic = api.as_("auditor").get("/v1/lineage/licenses/CC-BY-4.0").json()
    assert [(m["name"], m["version"], m["matching_examples"]) for m in lic["model_versions"]] == [
        ("faq-bot", 1, len(trained)), ("faq-bot", 2, len(trained))]
    src = api.as_("auditor").get("/v1/lineage/sources/helpdesk").json()
    assert [m["matching_examples"] for m in src["model_versions"]] == [len(trained), len(trained)]
    victim = trained[0]
    ex = api.as_("auditor").get(f"/v1/lineage/examples/{victim['example_id']}").json()
    assert [(m["name"], m["version"]) for m in ex["model_versions"]] == [("faq-bot", 1), ("faq-bot", 2)]
    assert ex["model_versions"][0]["tokens"] == 10 and ex["model_versions"][0]["epochs"] == 1

    # The auditor sees the ref as a pseudonym; the curator asking for erasure knows the real one.
    assert ex["example"]["provenance"]["source_ref"].startswith("hmac:")
    ref = api.as_("admin").get(f"/v1/examples/{victim['example_id']}").json()["provenance"]["source_ref"]
    r = api.as_("curator").post("/v1/erasure-requests", json={"selector": {"source_refs": [ref]},
                                                                "reason": "subject request"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert sorted((m["name"], m["version"]) for m in body["affected"]["model_versions"]) == [("faq-bot", 1),
                                                                                              ("faq-bot", 2)]
    assert body["affected"]["aliases"][0]["alias"] == "production" and body["warnings"]
    versions = api.as_("auditor").get("/v1/models/faq-bot/versions").json()["items"]
    assert {v["version"]: v["status"] for v in versions} == {1: "tainted", 2: "tainted"}
    r = api.as_("curator").post("/v1/models/faq-bot/aliases/staging", json={"version": 1, "reason": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "tainted"
    ml = api.as_("auditor").get("/v1/lineage/models/faq-bot/versions/2").json()
    assert ml["model_version"]["status"] == "tainted" and ml["model_version"]["tainted_by"] == [body["id"]]
    assert "production" in ml["warnings"][0] and ml["summary"]["examples"] == len(trained)
    assert got1["model_version"]["version"] == 1 and got2["model_version"]["version"] == 2


def test_a_reaped_run_is_a_fail_event(api, receiver, dispatched, base_model):
    # A killed trainer cannot report its death; the reaper's verdict must still reach the lineage
    # backend, or an incident review there would show the run as still going.
    import time

    from app.core.db import session_scope
    from app.training.reaper import reap

    snap, _recs = snapshot(api, n=4)
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                           "hyperparameters": HP, "model_name": "faq-bot"})
    rid = r.json()["id"]
    assert api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "gpu-7"}).status_code == 200
    time.sleep(0.05)
    with session_scope() as s:
        assert [str(x) for x in reap(s, stale_after_s=0)] == [rid]
    fail = [e for e in _drain(receiver) if e["run"]["runId"] == rid]
    assert [e["eventType"] for e in fail] == ["START", "FAIL"]
    assert "worker_lost" in fail[1]["run"]["facets"]["errorMessage"]["message"]


def test_a_run_that_never_started_still_has_one_start_and_one_terminal_event(api, receiver, dispatched, base_model):
    # The OpenLineage run cycle is START then one terminal event. A run refused in validation or cancelled
    # while queued never reaches training_run.started; a consumer must still see a START for its FAIL/ABORT.
    snap, _recs = snapshot(api, n=4)
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "hyperparameters": HP,
                                                           "base_model": base_model + "-nope",
                                                           "model_name": "faq-bot"})
    assert r.status_code == 201, r.text
    refused = r.json()
    assert refused["status"] == "failed"
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                           "hyperparameters": HP, "model_name": "faq-bot"})
    queued = r.json()
    assert queued["status"] == "queued"
    assert api.as_("curator").post(f"/v1/training-runs/{queued['id']}/cancel").status_code == 200
    events = _drain(receiver)
    for run, terminal in ((refused, "FAIL"), (queued, "ABORT")):
        mine = [e for e in events if e["run"]["runId"] == run["id"]]
        assert [e["eventType"] for e in mine] == ["START", terminal], run
        assert mine[0]["eventTime"] <= mine[1]["eventTime"]
        assert mine[0]["job"]["name"] == mine[1]["job"]["name"] == "faq-bot.train"
