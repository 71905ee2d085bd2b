"""Training runs and the model registry through the API, on SQLite and PostgreSQL. The trainer's side
of the protocol is driven by hand here (the real trainer runs in test_e2e.py)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.factories import complete_body, fake_artifact, snapshot

HP = {"epochs": 1, "max_steps": 3, "batch_tokens": 1024, "max_seq_len": 256}


def new_run(api, snap, base_model, name="faq-bot", expect=201, **extra):
    body = {"snapshot_id": snap["id"], "base_model": base_model, "method": "lora", "hyperparameters": HP,
            "model_name": name, "metadata": {"ticket": "T-1"}, **extra}
    r = api.as_("curator").post("/v1/training-runs", json=body)
    assert r.status_code == expect, r.text
    return r.json()


def started(api, snap, base_model, **kw):
    run = new_run(api, snap, base_model, **kw)
    r = api.as_("trainer").post(f"/v1/training-runs/{run['id']}/start", json={"worker_host": "gpu-1"})
    assert r.status_code == 200, r.text
    return r.json()


def count(sql: str, **params) -> int:
    from sqlalchemy import Uuid, bindparam

    from app.core.db import session_scope

    stmt = text(sql).bindparams(*[bindparam(k, type_=Uuid()) for k, v in params.items() if isinstance(v, uuid.UUID)])
    with session_scope() as s:
        return s.execute(stmt, params).scalar_one()


def test_create_queue_dispatch_list_and_validation(api, dispatched, base_model, artifact_root):
    snap, _ = snapshot(api)
    run = new_run(api, snap, base_model)
    assert run["status"] == "queued" and run["error"] is None and run["model_version"] is None
    assert run["expected_manifest_sha256"] == snap["manifest_sha256"]
    assert run["hyperparameters"] == HP  # as given: the trainer owns the defaults
    assert run["model_card"]["snapshot members"] == snap["member_count"]
    assert dispatched == [(run["id"],)]

    got = api.as_("auditor").get(f"/v1/training-runs/{run['id']}").json()
    assert got["status"] == "queued" and got["metadata"] == {"ticket": "T-1"}
    assert "reviews" not in got["model_card"]  # a status poll does not pay for the aggregates
    card = api.as_("trainer").get(f"/v1/training-runs/{run['id']}").json()["model_card"]
    assert card["reviews"] == {"decisions": 0, "reviewers": 0, "approvals": 0}  # approved directly in this test
    assert card["examples with pii scrubbed"] == 0 and card["sources"] == {"helpdesk": snap["member_count"]}
    assert api.as_("auditor").get(f"/v1/training-runs/{run['id']}", params={"model_card": True}).json()[
        "model_card"] == card

    # Explicit expected hash: equal is accepted, different is a 409 that names the cause.
    new_run(api, snap, base_model, expected_manifest_sha256=snap["manifest_sha256"])
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": base_model, "model_name": "m", "expected_manifest_sha256": "0" * 64})
    assert r.status_code == 409 and r.json()["error"]["code"] == "manifest_mismatch"

    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": str(uuid.uuid4()), "base_model": base_model, "model_name": "m"})
    assert r.status_code == 404

    for hp, field in (({"learning_rate": 5.0}, "hyperparameters.learning_rate"),
                      ({"lora_r": 0}, "hyperparameters.lora_r"),
                      ({"lora_dropout": 1.0}, "hyperparameters.lora_dropout"),
                      ({"epochs": 1.5}, "hyperparameters.epochs"),
                      ({"lr_scheduler": "step"}, "hyperparameters.lr_scheduler"),
                      ({"learning_rat": 1e-4}, "hyperparameters.learning_rat")):
        r = api.as_("curator").post("/v1/training-runs", json={
            "snapshot_id": snap["id"], "base_model": base_model, "model_name": "m", "hyperparameters": hp})
        assert r.status_code == 422, (hp, r.text)
        assert r.json()["error"]["details"][0]["field"] == field, r.json()
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                          "model_name": "m", "method": "rlhf"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "method"

    # A base model path that does not exist: the run is kept, failed while validating, never queued.
    missing = base_model + "-nope"
    bad = new_run(api, snap, missing)
    assert bad["status"] == "failed"
    assert bad["error"]["code"] == "bad_base_model" and bad["error"]["failed_in"] == "validating"
    assert bad["error"]["message"] == f"base model path {missing} does not exist"
    assert len(dispatched) == 2
    # A hub id is resolved on the GPU host, not here.
    assert new_run(api, snap, "Qwen/Qwen2.5-0.5B")["status"] == "queued"

    # Listing: newest first, filters, cursor pagination.
    page = api.as_("auditor").get("/v1/training-runs", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = api.as_("auditor").get("/v1/training-runs", params={"limit": 50, "cursor": page["next_cursor"]}).json()
    ids = [x["id"] for x in page["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == 4 and ids == sorted(ids, reverse=True)
    failed = api.as_("auditor").get("/v1/training-runs", params={"status": "failed"}).json()["items"]
    assert [x["id"] for x in failed] == [bad["id"]]
    assert len(api.as_("auditor").get("/v1/training-runs", params={"model": "faq-bot"}).json()["items"]) == 4
    assert api.as_("auditor").get("/v1/training-runs", params={"model": "other"}).json()["items"] == []
    assert len(api.as_("auditor").get("/v1/training-runs", params={"snapshot": snap["id"]}).json()["items"]) == 4

    # Roles: curators start, trainers report, auditors read, reviewers have no business here.
    assert api.as_("reviewer").get("/v1/training-runs").status_code == 403
    assert api.as_("auditor").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                              "model_name": "m"}).status_code == 403
    assert api.as_("curator").post(f"/v1/training-runs/{run['id']}/start",
                                   json={"worker_host": "x"}).status_code == 403
    assert api.as_("trainer").post(f"/v1/training-runs/{run['id']}/cancel").status_code == 403
    assert api.client.get("/v1/training-runs").status_code == 401


def test_protocol_success_registers_version_and_lineage(api, dispatched, base_model, artifact_root):
    snap, recs = snapshot(api)
    run = started(api, snap, base_model)
    rid = run["id"]
    assert run["status"] == "running" and run["worker_host"] == "gpu-1"
    # A second host (or a redelivered message) cannot claim it again.
    r = api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "gpu-2"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_startable"

    events = [{"kind": "log", "level": "info", "message": "downloading", "step": None, "data": {}},
              {"kind": "heartbeat", "level": "info", "message": "alive", "step": None, "data": {}},
              {"kind": "metrics", "level": "info", "message": "step 1", "step": 1,
               "data": {"train_loss": 2.5, "tokens_per_s": 100.0}},
              {"kind": "log", "level": "warn", "message": "3 examples truncated", "step": None, "data": None},
              {"kind": "metrics", "level": "info", "message": "val", "step": 1, "data": {"val_loss": 2.4}}]
    r = api.as_("trainer").post(f"/v1/training-runs/{rid}/events", json={"events": events})
    assert r.status_code == 200 and r.json() == {"accepted": 4}  # the heartbeat is not stored
    live = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
    assert live["metrics"] == {"train_loss": 2.5, "tokens_per_s": 100.0, "val_loss": 2.4, "step": 1}

    p1 = api.as_("auditor").get(f"/v1/training-runs/{rid}/events", params={"limit": 2}).json()
    p2 = api.as_("auditor").get(f"/v1/training-runs/{rid}/events",
                                params={"limit": 50, "cursor": p1["next_cursor"]}).json()
    msgs = [e["message"] for e in p1["items"] + p2["items"]]
    assert msgs[-4:] == ["downloading", "step 1", "3 examples truncated", "val"] and p2["next_cursor"] is None
    metrics = api.as_("auditor").get(f"/v1/training-runs/{rid}/events", params={"kind": "metrics"}).json()["items"]
    assert [m["step"] for m in metrics] == [1, 1]
    warns = api.as_("auditor").get(f"/v1/training-runs/{rid}/events", params={"level": "warn"}).json()["items"]
    assert [w["message"] for w in warns] == ["3 examples truncated"]

    uri, sha = fake_artifact(artifact_root, "faq-bot", rid)
    body = complete_body(recs, uri, sha)
    done = api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=body)
    assert done.status_code == 200, done.text
    out = done.json()
    assert out["status"] == "succeeded" and out["model_version"]["version"] == 1
    assert out["metrics"] == body["metrics"]
    n_train = len(body["examples"])
    assert count("SELECT count(*) FROM lineage WHERE run_id = :r", r=uuid.UUID(rid)) == n_train
    assert count("SELECT sum(tokens) FROM lineage") == sum(e["tokens"] for e in body["examples"])
    # example ids come from the frozen membership, not from the report
    assert count("SELECT count(*) FROM lineage l JOIN snapshot_members m ON m.snapshot_id = :s AND "
                 "m.example_id = l.example_id AND m.revision_id = l.revision_id",
                 s=uuid.UUID(snap["id"])) == n_train

    # A retried completion (lost response) is idempotent; a different artifact is a conflict.
    again = api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=body)
    assert again.status_code == 200 and again.json()["model_version"] == out["model_version"]
    assert count("SELECT count(*) FROM lineage") == n_train
    assert count("SELECT count(*) FROM model_versions") == 1
    uri2, sha2 = fake_artifact(artifact_root, "faq-bot", rid + "-b", payload=b"other")
    r = api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=complete_body(recs, uri2, sha2))
    assert r.status_code == 409
    # Finished runs accept no more events and cannot be cancelled.
    assert api.as_("trainer").post(f"/v1/training-runs/{rid}/events", json={"events": events}).status_code == 409
    r = api.as_("curator").post(f"/v1/training-runs/{rid}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "run_finished"

    versions = api.as_("auditor").get("/v1/models/faq-bot/versions").json()["items"]
    assert versions == [{**versions[0], "version": 1, "status": "candidate", "run_id": rid, "artifact_sha256": sha,
                         "aliases": []}]
    art = api.as_("auditor").get("/v1/models/faq-bot/versions/1/artifact")
    assert art.status_code == 200 and art.headers["X-Artifact-SHA256"] == sha
    import hashlib

    assert hashlib.sha256(art.content).hexdigest() == sha
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True
    actions = [a for (a,) in _audit_actions()]
    for a in ("training_run.created", "training_run.queued", "training_run.started", "model_version.registered",
              "training_run.succeeded", "model_version.downloaded"):
        assert a in actions, a


def _audit_actions():
    from app.core.db import session_scope

    with session_scope() as s:
        return s.execute(text("SELECT action FROM audit_events ORDER BY seq")).all()


def test_bad_completions_write_nothing(api, dispatched, base_model, artifact_root, tmp_path):
    snap, recs = snapshot(api)
    rid = started(api, snap, base_model)["id"]
    uri, sha = fake_artifact(artifact_root, "faq-bot", rid)

    def post(body):
        return api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=body)

    stranger = complete_body(recs, uri, sha)
    stranger["examples"].append({"revision_id": str(uuid.uuid4()), "tokens": 5, "epochs": 1})
    r = post(stranger)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["code"] == "not_in_snapshot"
    r = post(complete_body(recs, uri, "f" * 64))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "artifact_sha256"
    outside = tmp_path / "elsewhere.tar.gz"
    outside.write_bytes(b"x")
    r = post(complete_body(recs, outside.as_uri(), sha))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "artifact_uri"
    r = post(complete_body(recs, (artifact_root / "faq-bot" / ".." / ".." / "elsewhere.tar.gz").as_uri(), sha))
    assert r.status_code == 422
    assert count("SELECT count(*) FROM lineage") == 0
    assert count("SELECT count(*) FROM model_versions") == 0
    assert api.as_("auditor").get(f"/v1/training-runs/{rid}").json()["status"] == "running"
    # The run is still completable after the refusals.
    assert post(complete_body(recs, uri, sha)).status_code == 200


def test_cancel_fail_and_reaper(api, dispatched, base_model, artifact_root):
    snap, recs = snapshot(api)
    # cancel a queued run; the trainer's start and reports are then refused
    q = new_run(api, snap, base_model)
    c = api.as_("curator").post(f"/v1/training-runs/{q['id']}/cancel")
    assert c.status_code == 200 and c.json()["status"] == "cancelled" and c.json()["cancelled_by"]
    assert api.as_("curator").post(f"/v1/training-runs/{q['id']}/cancel").status_code == 409
    assert api.as_("trainer").post(f"/v1/training-runs/{q['id']}/start", json={"worker_host": "h"}).status_code == 409

    # cancel a running run: its next events post gets 409 (how the trainer learns to stop)
    r1 = started(api, snap, base_model)
    api.as_("curator").post(f"/v1/training-runs/{r1['id']}/cancel")
    r = api.as_("trainer").post(f"/v1/training-runs/{r1['id']}/events", json={"events": [{"kind": "heartbeat"}]})
    assert r.status_code == 409 and r.json()["error"]["details"]["status"] == "cancelled"
    uri, sha = fake_artifact(artifact_root, "faq-bot", r1["id"])
    assert api.as_("trainer").post(f"/v1/training-runs/{r1['id']}/complete",
                                   json=complete_body(recs, uri, sha)).status_code == 409

    # the trainer reports a failure (twice: idempotent)
    r2 = started(api, snap, base_model)
    for _ in range(2):
        r = api.as_("trainer").post(f"/v1/training-runs/{r2['id']}/fail",
                                    json={"code": "out_of_memory", "message": "CUDA out of memory"})
        assert r.status_code == 200
    assert r.json()["error"] == {"code": "out_of_memory", "message": "CUDA out of memory", "failed_in": "running"}

    # heartbeats stop: the reaper fails the run as worker_lost; a late report is refused
    r3 = started(api, snap, base_model)
    live = started(api, snap, base_model)
    from app.core.db import session_scope
    from app.training.reaper import reap

    with session_scope() as s:
        from app.models.training import TrainingRun

        s.get(TrainingRun, uuid.UUID(r3["id"])).heartbeat_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with session_scope() as s:
        assert reap(s, stale_after_s=120) == [uuid.UUID(r3["id"])]
    with session_scope() as s:
        assert reap(s, stale_after_s=120) == []  # idempotent
    got = api.as_("auditor").get(f"/v1/training-runs/{r3['id']}").json()
    assert got["status"] == "failed" and got["error"]["code"] == "worker_lost"
    assert api.as_("auditor").get(f"/v1/training-runs/{live['id']}").json()["status"] == "running"
    uri, sha = fake_artifact(artifact_root, "faq-bot", r3["id"])
    late = api.as_("trainer").post(f"/v1/training-runs/{r3['id']}/complete", json=complete_body(recs, uri, sha))
    assert late.status_code == 409 and "worker_lost" in late.json()["error"]["message"]
    assert api.as_("trainer").post(f"/v1/training-runs/{r3['id']}/events",
                                   json={"events": [{"kind": "heartbeat"}]}).status_code == 409
    errors = api.as_("auditor").get(f"/v1/training-runs/{r3['id']}/events", params={"level": "error"}).json()
    assert errors["items"][0]["message"].startswith("worker_lost")
    # failed and cancelled runs leave no lineage and no model version
    assert count("SELECT count(*) FROM lineage") == 0
    assert count("SELECT count(*) FROM model_versions") == 0
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True


def test_registry_promote_rollback_history_taint(api, dispatched, base_model, artifact_root):
    snap, recs = snapshot(api)
    for _ in range(3):
        rid = started(api, snap, base_model)["id"]
        uri, sha = fake_artifact(artifact_root, "faq-bot", rid, payload=rid.encode())
        assert api.as_("trainer").post(f"/v1/training-runs/{rid}/complete",
                                       json=complete_body(recs, uri, sha)).status_code == 200
    vs = api.as_("curator").get("/v1/models/faq-bot/versions").json()["items"]
    assert [v["version"] for v in vs] == [3, 2, 1]
    page = api.as_("curator").get("/v1/models/faq-bot/versions?limit=2").json()
    assert [v["version"] for v in page["items"]] == [3, 2] and page["next_cursor"] == 2
    page = api.as_("curator").get(f"/v1/models/faq-bot/versions?limit=2&cursor={page['next_cursor']}").json()
    assert [v["version"] for v in page["items"]] == [1] and page["next_cursor"] is None
    assert api.as_("curator").get("/v1/models/faq-bot/versions?cursor=0").status_code == 422

    def move(alias, version, reason, role="curator"):
        return api.as_(role).post(f"/v1/models/faq-bot/aliases/{alias}", json={"version": version, "reason": reason})

    assert move("production", 1, "first", role="auditor").status_code == 403
    assert move("production", 1, "first release").json() == {
        "name": "faq-bot", "alias": "production", "version": 1, "from_version": None, "changed": True,
        "override": False}
    assert move("production", 2, "better eval").status_code == 200
    assert move("staging", 3, "try it").status_code == 200
    rb = move("production", 1, "v2 regressed on refunds")  # rollback: the same call, an earlier version
    assert rb.json()["from_version"] == 2 and rb.json()["changed"] is True
    assert move("production", 1, "again").json()["changed"] is False  # no-op, no history row

    hist = api.as_("auditor").get("/v1/models/faq-bot/aliases/production/history").json()["items"]
    assert [(h["from_version"], h["to_version"], h["reason"]) for h in hist] == [
        (2, 1, "v2 regressed on refunds"), (1, 2, "better eval"), (None, 1, "first release")]
    assert all(h["actor"].startswith("test-curator") and h["at"] for h in hist)
    page = api.as_("auditor").get("/v1/models/faq-bot/aliases/production/history", params={"limit": 1}).json()
    nxt = api.as_("auditor").get("/v1/models/faq-bot/aliases/production/history",
                                 params={"limit": 5, "cursor": page["next_cursor"]}).json()
    assert [h["to_version"] for h in page["items"] + nxt["items"]] == [1, 2, 1]

    by_v = {v["version"]: v for v in api.as_("auditor").get("/v1/models/faq-bot/versions").json()["items"]}
    assert by_v[1]["aliases"] == ["production"] and by_v[1]["status"] == "deployed"
    assert by_v[2]["aliases"] == [] and by_v[2]["status"] == "retired"
    assert by_v[3]["aliases"] == ["staging"] and by_v[3]["status"] == "deployed"
    run1 = api.as_("auditor").get(f"/v1/training-runs/{by_v[1]['run_id']}").json()
    assert run1["model_version"]["name"] == "faq-bot" and run1["model_version"]["version"] == 1

    # a tainted version cannot be promoted (and stays tainted)
    r = api.as_("curator").patch("/v1/models/faq-bot/versions/2", json={"status": "tainted", "reason": "erasure"})
    assert r.status_code == 200 and r.json()["status"] == "tainted"
    r = move("production", 2, "roll forward")
    assert r.status_code == 409 and r.json()["error"]["code"] == "tainted"
    assert api.as_("curator").patch("/v1/models/faq-bot/versions/2", json={"status": "candidate"}).status_code == 409

    assert move("production", 9, "nope").status_code == 404
    assert api.as_("auditor").get("/v1/models/nope/versions").status_code == 404
    models = api.as_("auditor").get("/v1/models").json()["items"]
    assert models[0]["name"] == "faq-bot" and models[0]["latest_version"] == 3
    assert models[0]["aliases"] == {"production": 1, "staging": 3}
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True


def test_a_snapshot_without_train_examples_is_refused_before_any_host_sees_it(api, dispatched, base_model):
    """The split hashes each example id, so a small snapshot with a large validation_fraction can freeze
    with every member in validation; the trainer would claim the run and fail it `invalid_data` ("the
    snapshot has no train examples"). Stratified, 0.75 of 2 examples is exactly 2: certain here."""
    from tests.factories import approved_dataset, freeze

    ds, _ = approved_dataset(api, n=2)
    snap = freeze(api, ds, validation_fraction=0.75, stratify_by="lang")
    assert snap["counts"]["train"] == 0 and snap["counts"]["validation"] == 2
    err = new_run(api, snap, base_model, expect=422)["error"]
    assert err["code"] == "no_train_examples" and err["details"][0]["field"] == "snapshot_id", err
    assert dispatched == []


def test_version_numbers_count_up_per_name(api, dispatched, base_model, artifact_root):
    snap, recs = snapshot(api)
    got = []
    for name in ("a-model", "b-model", "a-model"):
        rid = started(api, snap, base_model, name=name)["id"]
        uri, sha = fake_artifact(artifact_root, name, rid)
        r = api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=complete_body(recs, uri, sha))
        got.append((name, r.json()["model_version"]["version"]))
    assert got == [("a-model", 1), ("b-model", 1), ("a-model", 2)]


def test_hyperparameter_ranges_match_the_trainer():
    """The API cannot import the trainer, so its copy of the ranges is checked against the original."""
    hparams = pytest.importorskip("trainer.hparams")
    from app.training.schemas import Hyperparameters

    fields = Hyperparameters.model_fields
    assert set(fields) == set(hparams.DEFAULTS)
    for key, (lo, hi) in hparams._INT_RANGES.items():
        meta = {type(m).__name__: m for m in fields[key].metadata}
        assert (meta["Ge"].ge, meta["Le"].le) == (lo, hi), key
    for key, (lo, hi, low_inclusive) in hparams._FLOAT_RANGES.items():
        meta = {type(m).__name__: m for m in fields[key].metadata}
        got_lo = meta["Ge"].ge if low_inclusive else meta["Gt"].gt
        got_hi = meta["Le"].le if "Le" in meta else meta["Lt"].lt
        assert (got_lo, got_hi) == (lo, hi), key
    # every default the API documents is one the trainer accepts
    hparams.resolve(Hyperparameters().model_dump())
    assert Hyperparameters().model_dump() == {k: v for k, v in hparams.resolve({}).items()
                                              if k != "micro_batch_tokens"} | {"micro_batch_tokens": None}


def test_cli_runs_list_show_reap(api, dispatched, base_model, artifact_root):
    from typer.testing import CliRunner

    from app.cli import app as cli

    snap, _ = snapshot(api)
    run = new_run(api, snap, base_model)
    runner = CliRunner()
    r = runner.invoke(cli, ["runs", "show", run["id"]])
    assert r.exit_code == 0, r.output
    assert '"status": "queued"' in r.output
    r = runner.invoke(cli, ["runs", "show", "00000000-0000-0000-0000-000000000000"])
    assert r.exit_code == 4 and "not found" in r.output and "Traceback" not in r.output
    assert runner.invoke(cli, ["runs", "list"]).exit_code == 0
    r = runner.invoke(cli, ["runs", "reap", "--stale-after", "60"])
    assert r.exit_code == 0 and "reaped 0 run(s)" in r.output


def test_reaper_task_on_beat(api, dispatched, base_model, artifact_root, monkeypatch):
    from app.core.config import reset_settings
    from workers.celery_app import celery
    from workers.tasks.training import reap as reap_task

    assert celery.conf.beat_schedule["training-reap"]["task"] == "pedigree.training.reap"
    assert "pedigree.training.reap" in celery.tasks
    snap, _ = snapshot(api)
    rid = started(api, snap, base_model)["id"]
    assert reap_task() == []
    monkeypatch.setenv("PEDIGREE_TRAINING_HEARTBEAT_TIMEOUT_S", "0")
    reset_settings()
    assert reap_task() == [rid]
    assert api.as_("auditor").get(f"/v1/training-runs/{rid}").json()["error"]["code"] == "worker_lost"


def test_idempotency_key_makes_a_create_retry_safe(api, dispatched, base_model):
    snap, _ = snapshot(api)
    body = {"snapshot_id": snap["id"], "base_model": base_model, "hyperparameters": HP, "model_name": "faq-bot"}
    cur = api.as_("curator")
    first = cur.post("/v1/training-runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-30"})
    assert first.status_code == 201, first.text
    # The response was lost; the client retries: same run, 200, nothing dispatched twice.
    again = cur.post("/v1/training-runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-30"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert dispatched == [(first.json()["id"],)]
    assert count("SELECT count(*) FROM training_runs") == 1
    # The same key for another request is refused, naming the header and the run it belongs to.
    other = cur.post("/v1/training-runs", json={**body, "model_name": "other"},
                     headers={"Idempotency-Key": "nightly-2026-11-30"})
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "idempotency_key_reused" and err["details"]["field"] == "Idempotency-Key"
    assert err["details"]["run_id"] == first.json()["id"]
    # Keys are per caller: another curator's key of the same name is a new run; no key, no dedup.
    assert api.as_("admin").post("/v1/training-runs", json=body,
                                 headers={"Idempotency-Key": "nightly-2026-11-30"}).status_code == 201
    assert cur.post("/v1/training-runs", json=body).status_code == 201
    assert cur.post("/v1/training-runs", json=body).status_code == 201
    assert count("SELECT count(*) FROM training_runs") == 4
    assert cur.post("/v1/training-runs", json=body, headers={"Idempotency-Key": ""}).status_code == 422


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_base_model_only_from_model_roots_or_hub(api, dispatched, base_model, tmp_path, monkeypatch):
    from app.core.config import Settings, get_settings, reset_settings

    snap, _ = snapshot(api, n=6)
    outside = tmp_path.parent.parent.parent / f"outside-{uuid.uuid4().hex[:6]}"  # beyond the pytest root
    root = tmp_path / "models"
    (root / "real").mkdir(parents=True)
    (root / "real" / "config.json").write_text("{}")
    (root / "escape").symlink_to("/proc/self")
    monkeypatch.setenv("PEDIGREE_MODEL_ROOTS", f"/nonexistent-root{os.pathsep}{root}")
    reset_settings()
    assert get_settings().model_root_list[-1] == root

    assert new_run(api, snap, str(root / "real"))["status"] == "queued"
    assert new_run(api, snap, "Qwen/Qwen2.5-0.5B")["status"] == "queued"
    # Inside a root, a missing model is the caller's own business: the run records why it failed.
    assert new_run(api, snap, str(root / "missing"))["error"]["code"] == "bad_base_model"
    runs = count("SELECT count(*) FROM training_runs")

    # Anywhere else, existing or not, one answer that names the field and nothing about the path.
    refused = ["/proc/self/environ", "/etc/passwd", "/etc/no-such-file", str(outside), base_model,
               str(root / "escape" / "environ"), str(root / ".." / "models-x"), f"{root}/real/../../../x", str(root),
               "../../etc/passwd", "org/..", "../x", "org/na me", "~/.ssh/id_rsa"]
    bodies = set()
    for bad in refused:
        r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": bad,
                                                              "model_name": "m"})
        assert r.status_code == 422, (bad, r.text)
        err = r.json()["error"]
        assert err["details"][0]["field"] == "base_model" and err["code"] == "bad_base_model"
        bodies.add(r.text)
    assert len(bodies) == 1 and "/proc" not in bodies.pop()
    # A NUL is refused before any route runs (app/core/textguard.py), naming the field all the same.
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": "org/name\x00",
                                                          "model_name": "m"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "base_model", r.text
    assert count("SELECT count(*) FROM training_runs") == runs  # nothing stored, nothing queued

    monkeypatch.delenv("PEDIGREE_MODEL_ROOTS")
    monkeypatch.setenv("PEDIGREE_ARTIFACT_ROOT", "/srv/pedigree/artifacts")
    assert Settings().model_root_list == [Path("/srv/pedigree/models")]
    monkeypatch.setenv("PEDIGREE_ARTIFACT_ROOT", "s3://bucket/artifacts")
    assert Settings().model_root_list == [Path("var/models")]
    reset_settings()


def test_model_card_governance_counts_the_members_reviews_and_findings(api, dispatched, base_model, artifact_root):
    """The card's review and PII aggregates (the review and PII read APIs) over the snapshot's members."""
    from app.core.config import get_settings
    from app.core.db import session_scope

    def db(value) -> str:
        u = uuid.UUID(str(value))
        return u.hex if get_settings().is_sqlite else str(u)

    snap, recs = snapshot(api, n=4)
    a, b = recs[0], recs[1]
    ds = db(snap["dataset_id"])
    with session_scope() as s:
        for who, decision in (("ann", "approve"), ("bo", "reject")):
            s.execute(text(
                "INSERT INTO reviews (id, example_id, dataset_id, revision_id, reviewer, reviewer_key_id, decision, "
                "resolves_escalation, created_at) VALUES (:id, :ex, :ds, :rev, :who, :key, :d, false, "
                "CURRENT_TIMESTAMP)"), {"id": db(uuid.uuid4()), "ex": db(a["example_id"]), "ds": ds,
                                        "rev": db(a["revision_id"]), "who": who, "key": db(uuid.uuid4()), "d": decision})
        for entity in ("EMAIL_ADDRESS", "PERSON"):
            s.execute(text(
                "INSERT INTO pii_findings (id, example_id, dataset_id, revision_id, source_revision_id, field_path, "
                "entity_type, start, \"end\", scrubbed_start, scrubbed_end, score, recognizer, operator, engine, "
                "model, created_at) VALUES (:id, :ex, :ds, :rev, :rev, 'output', :t, 0, 5, 0, 7, 1.0, 'r', "
                "'replace', 'pedigree', 'm1', CURRENT_TIMESTAMP)"),
                {"id": db(uuid.uuid4()), "ex": db(b["example_id"]), "ds": ds, "rev": db(b["revision_id"]), "t": entity})
    run = new_run(api, snap, base_model)
    card = api.as_("trainer").get(f"/v1/training-runs/{run['id']}").json()["model_card"]
    assert card["reviews"] == {"decisions": 2, "reviewers": 2, "approvals": 1}
    assert card["pii scrubbed (findings by entity type)"] == {"EMAIL_ADDRESS": 1, "PERSON": 1}
    assert card["examples with pii scrubbed"] == 1
