"""Evaluations, canaries, model policies and promotion gates through the API, on SQLite and PostgreSQL.
The trainer's side of the wire protocol is driven by hand here (docs/evaluation.md)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from tests.factories import complete_body, fake_artifact, ingest, instruction_line, new_dataset, snapshot

HP = {"epochs": 1, "max_steps": 3, "batch_tokens": 1024, "max_seq_len": 256}
RESULTS = {
    "heldout": {"validation_loss": 1.2, "base_validation_loss": 2.0},
    "pii_extraction": {"probed": 4, "extracted": 0, "rate": 0.0, "by_entity_type": {}},
    "membership": {"auc": 0.52},
}


def trained_version(api, base_model, artifact_root, name="faq-bot", **extra):
    snap, recs = snapshot(api)
    body = {"snapshot_id": snap["id"], "base_model": base_model, "method": "lora", "hyperparameters": HP,
            "model_name": name, **extra}
    run = api.as_("curator").post("/v1/training-runs", json=body)
    assert run.status_code == 201, run.text
    rid = run.json()["id"]
    assert api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "gpu-1"}).status_code == 200
    uri, sha = fake_artifact(artifact_root, name, rid)
    done = api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=complete_body(recs, uri, sha))
    assert done.status_code == 200, done.text
    return done.json(), recs


def evaluate(api, name, version, expect=202, **body):
    body.setdefault("suites", ["heldout", "pii_extraction", "membership"])
    r = api.as_("curator").post(f"/v1/models/{name}/versions/{version}/evaluations", json=body)
    assert r.status_code == expect, r.text
    return r.json()


def run_to_end(api, eid, results=RESULTS):
    t = api.as_("trainer")
    assert t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"}).status_code == 200
    r = t.post(f"/v1/evaluations/{eid}/complete", json={"results": results})
    assert r.status_code == 200, r.text
    return r.json()


def test_create_run_protocol_results_and_bad_input(api, dispatched, eval_dispatched, base_model, artifact_root):
    run, recs = trained_version(api, base_model, artifact_root)
    ev_ds = new_dataset(api, is_eval_set=True)
    ingest(api, ev_ds, [instruction_line(i) for i in range(3)])
    plain = new_dataset(api)

    # Bad input names what is wrong.
    r = api.as_("curator").post("/v1/models/faq-bot/versions/1/evaluations", json={"suites": ["heldout", "vibes"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_suite"
    assert r.json()["error"]["details"][0]["field"] == "suites[1]"
    r = api.as_("curator").post("/v1/models/faq-bot/versions/1/evaluations",
                                json={"suites": ["heldout"], "eval_sets": [plain["name"]]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_eval_set"
    assert r.json()["error"]["details"][0]["field"] == "eval_sets[0]"
    r = api.as_("curator").post("/v1/models/faq-bot/versions/1/evaluations", json={"suites": ["memorization"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_canaries"
    assert api.as_("curator").post("/v1/models/faq-bot/versions/9/evaluations",
                                   json={"suites": ["heldout"]}).status_code == 404
    assert eval_dispatched == []

    ev = evaluate(api, "faq-bot", 1, eval_sets=[ev_ds["id"]], reference=ev_ds["name"], params={"samples": 2})
    assert ev["status"] == "queued" and ev["model"] == {"name": "faq-bot", "version": 1}
    assert eval_dispatched == [(ev["id"],)]
    eid = ev["id"]
    t = api.as_("trainer")
    # Files and the spec only while it runs.
    assert t.get(f"/v1/evaluations/{eid}/spec").status_code == 409
    assert t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"}).json()["status"] == "running"
    r = t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-2"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_startable"
    assert api.as_("auditor").get(f"/v1/evaluations/{eid}/spec").status_code == 403

    spec = t.get(f"/v1/evaluations/{eid}/spec").json()
    assert spec["suites"] == ["heldout", "pii_extraction", "membership"] and spec["base_model"] == base_model
    assert spec["files"] == {"train": "train", "validation": "validation",
                             "eval_sets": {ev_ds["name"]: f"eval_sets/{ev_ds['name']}"}, "reference": "reference",
                             "pii_probes": "pii_probes"}
    assert spec["adapter"]["sha256"] == run["model_version"]["artifact_sha256"] and spec["canaries"] == []
    lines = {}
    for wire in ("train", "validation", f"eval_sets/{ev_ds['name']}", "reference", "pii_probes"):
        r = t.get(f"/v1/evaluations/{eid}/files/{wire}")
        assert r.status_code == 200, (wire, r.text)
        lines[wire] = [json.loads(x) for x in r.text.splitlines() if x]
    assert sorted(x["revision_id"] for x in lines["train"]) == sorted(
        x["revision_id"] for x in recs if x["split"] == "train")
    assert sorted(x["revision_id"] for x in lines["validation"]) == sorted(
        x["revision_id"] for x in recs if x["split"] == "validation")
    assert len(lines[f"eval_sets/{ev_ds['name']}"]) == 3 and lines["reference"] == lines[f"eval_sets/{ev_ds['name']}"]
    assert {"revision_id", "format", "content", "content_sha256"} <= set(lines["reference"][0])
    assert lines["pii_probes"] == []  # this snapshot has no PII
    adapter = t.get(f"/v1/evaluations/{eid}/files/adapter")
    assert hashlib.sha256(adapter.content).hexdigest() == spec["adapter"]["sha256"]
    with tarfile.open(fileobj=io.BytesIO(adapter.content)) as tar:
        assert "adapter_config.json" in tar.getnames()
    assert t.get(f"/v1/evaluations/{eid}/files/nope").status_code == 404

    r = t.post(f"/v1/evaluations/{eid}/events", json={"events": [
        {"kind": "heartbeat"}, {"kind": "log", "message": "scoring 3 prompts"}]})
    assert r.json() == {"accepted": 1}
    # Results must be exactly the suites asked for.
    r = t.post(f"/v1/evaluations/{eid}/complete", json={"results": {"heldout": {}}})
    assert r.status_code == 422 and {d["field"] for d in r.json()["error"]["details"]} == {
        "results.pii_extraction", "results.membership"}
    assert api.as_("auditor").get(f"/v1/evaluations/{eid}").json()["results"] == {}
    done = t.post(f"/v1/evaluations/{eid}/complete", json={"results": RESULTS}).json()
    assert done["status"] == "succeeded" and done["results"]["membership"]["auc"] == 0.52
    # A retried report is the same answer; a late one after the end is refused.
    assert t.post(f"/v1/evaluations/{eid}/complete", json={"results": RESULTS}).status_code == 200
    r = t.post(f"/v1/evaluations/{eid}/events", json={"events": [{"kind": "heartbeat"}]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "evaluation_finished"

    got = api.as_("auditor").get(f"/v1/evaluations/{eid}").json()
    assert got["results"] == RESULTS and got["error"] is None and got["worker_host"] == "gpu-1"
    items = api.as_("auditor").get("/v1/models/faq-bot/versions/1/evaluations").json()["items"]
    assert [i["id"] for i in items] == [eid]
    msgs = [e["message"] for e in api.as_("auditor").get(f"/v1/evaluations/{eid}/events").json()["items"]]
    assert "scoring 3 prompts" in msgs and msgs[-1] == "results stored"
    lin = api.as_("auditor").get("/v1/lineage/models/faq-bot/versions/1").json()
    assert lin["evaluations"][0]["id"] == eid and lin["evaluations"][0]["results"] == RESULTS


def test_cancel_fail_reaper_and_artifact_gone(api, dispatched, eval_dispatched, base_model, artifact_root):
    from app.core.db import session_scope
    from app.training.reaper import reap

    run, _ = trained_version(api, base_model, artifact_root)
    t = api.as_("trainer")
    a = evaluate(api, "faq-bot", 1)["id"]
    assert api.as_("curator").post(f"/v1/evaluations/{a}/cancel").json()["status"] == "cancelled"
    r = t.post(f"/v1/evaluations/{a}/start", json={"worker_host": "gpu-1"})
    assert r.status_code == 409

    b = evaluate(api, "faq-bot", 1)["id"]
    t.post(f"/v1/evaluations/{b}/start", json={"worker_host": "gpu-1"})
    assert t.post(f"/v1/evaluations/{b}/fail", json={"code": "oom", "message": "CUDA OOM"}).status_code == 200
    got = api.as_("auditor").get(f"/v1/evaluations/{b}").json()
    assert got["status"] == "failed" and got["error"]["code"] == "oom" and got["results"] == {}

    c = evaluate(api, "faq-bot", 1)["id"]
    t.post(f"/v1/evaluations/{c}/start", json={"worker_host": "gpu-9"})
    with session_scope() as s:
        reap(s, stale_after_s=-1)
    got = api.as_("auditor").get(f"/v1/evaluations/{c}").json()
    assert got["status"] == "failed" and got["error"]["code"] == "worker_lost"
    r = t.post(f"/v1/evaluations/{c}/complete", json={"results": RESULTS})
    assert r.status_code == 409 and r.json()["error"]["code"] == "evaluation_finished"
    assert api.as_("auditor").get(f"/v1/evaluations/{c}").json()["results"] == {}

    Path(artifact_root / "faq-bot" / f"{run['id']}.tar.gz").unlink()
    r = api.as_("curator").post("/v1/models/faq-bot/versions/1/evaluations", json={"suites": ["heldout"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "artifact_missing"


def test_canaries_on_training_runs(api, dispatched, eval_dispatched, base_model, artifact_root):
    from sqlalchemy import text

    from app.core.db import session_scope

    snap, _ = snapshot(api)
    body = {"snapshot_id": snap["id"], "base_model": base_model, "method": "qlora", "hyperparameters": HP,
            "model_name": "q", "canaries": {"count": 2}}
    r = api.as_("curator").post("/v1/training-runs", json=body)
    assert r.status_code == 422 and "canaries" in r.text
    # DPO trains on preference pairs, not the SFT stream the canaries go into: refused the same way.
    r = api.as_("curator").post("/v1/training-runs", json={**body, "method": "dpo"})
    assert r.status_code == 422 and "canaries" in r.text and "'dpo'" in r.text
    r = api.as_("curator").post("/v1/training-runs", json={**body, "method": "lora",
                                                           "canaries": {"count": 0}})
    assert r.status_code == 422

    run, _ = trained_version(api, base_model, artifact_root, canaries={"count": 5, "repetitions": [1, 4, 16, 64]})
    rid = run["id"]
    seen = api.as_("trainer").get(f"/v1/training-runs/{rid}").json()["canaries"]
    assert [c["repetitions"] for c in seen] == [1, 4, 16, 64, 1]
    assert all(len(c["secret"]) == 9 and c["secret"].isdigit() and c["template"].count("{secret}") == 1
               for c in seen)
    assert seen[0]["space"] == {"kind": "digits", "length": 9}
    public = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
    assert [c["id"] for c in public["canaries"]] == [c["id"] for c in seen]
    assert all("secret" not in c for c in public["canaries"])
    card = public["model_card"]["canaries (synthetic, not examples)"]
    assert [c["repetitions"] for c in card] == [1, 4, 16, 64, 1]
    secrets = [c["secret"] for c in seen]
    assert not any(s in json.dumps(public) for s in secrets)
    with session_scope() as s:
        blobs = [bytes(b) for (b,) in s.execute(text("SELECT ciphertext FROM training_canaries"))]
    assert len(blobs) == 5 and not any(sec.encode() in b for b in blobs for sec in secrets)

    eid = evaluate(api, "faq-bot", 1, suites=["memorization"])["id"]
    api.as_("trainer").post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"})
    spec = api.as_("trainer").get(f"/v1/evaluations/{eid}/spec").json()
    assert [c["secret"] for c in spec["canaries"]] == secrets and spec["files"]["pii_probes"] is None


def test_policy_gates_override_and_concurrent_promotions(api, dispatched, eval_dispatched, base_model,
                                                         artifact_root):
    trained_version(api, base_model, artifact_root)
    trained_version(api, base_model, artifact_root)
    c = api.as_("curator")
    assert c.get("/v1/models/faq-bot/policy").json()["gates"] == []
    r = c.request("PUT", "/v1/models/faq-bot/policy", json={"gates": [{"metric": "heldout.vibes", "max": 1}],
                                                  "gated_aliases": ["production"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_metric"
    assert r.json()["error"]["details"][0]["field"] == "gates[0].metric"
    assert c.request("PUT", "/v1/models/faq-bot/policy", json={"gates": [{"metric": "membership.auc", "max": 1, "min": 0}]}
                 ).status_code == 422
    assert c.request("PUT", "/v1/models/nope/policy", json={"gates": []}).status_code == 404
    policy = {"gates": [{"metric": "pii_extraction.rate", "max": 0.0}, {"metric": "membership.auc", "max": 0.6}],
              "gated_aliases": ["production"]}
    assert c.request("PUT", "/v1/models/faq-bot/policy", json=policy).status_code == 200
    got = api.as_("auditor").get("/v1/models/faq-bot/policy").json()
    assert got["gates"] == policy["gates"] and got["gated_aliases"] == ["production"]

    # No evaluation: every gated metric is missing.
    r = c.post("/v1/models/faq-bot/aliases/production", json={"version": 1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
    assert [(d["metric"], d["value"], d["limit"]) for d in r.json()["error"]["details"]] == [
        ("pii_extraction.rate", None, 0.0), ("membership.auc", None, 0.6)]
    # An ungated alias moves as before.
    assert c.post("/v1/models/faq-bot/aliases/staging", json={"version": 1}).status_code == 200

    bad = {**RESULTS, "membership": {"auc": 0.91}}
    run_to_end(api, evaluate(api, "faq-bot", 1)["id"], bad)
    r = c.post("/v1/models/faq-bot/aliases/production", json={"version": 1})
    assert r.status_code == 409
    assert [(d["metric"], d["value"], d["limit"]) for d in r.json()["error"]["details"]] == [
        ("membership.auc", 0.91, 0.6)]
    # A failed evaluation with good figures does not count.
    eid = evaluate(api, "faq-bot", 1)["id"]
    api.as_("trainer").post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"})
    api.as_("trainer").post(f"/v1/evaluations/{eid}/fail", json={"code": "oom"})
    assert c.post("/v1/models/faq-bot/aliases/production", json={"version": 1}).status_code == 409

    # Override: admin only, with a reason; audited and in the history.
    r = c.post("/v1/models/faq-bot/aliases/production", json={"version": 1, "reason": "hotfix", "override": True})
    assert r.status_code == 403
    r = api.as_("admin").post("/v1/models/faq-bot/aliases/production", json={"version": 1, "override": True})
    assert r.status_code == 403
    r = api.as_("admin").post("/v1/models/faq-bot/aliases/production",
                              json={"version": 1, "reason": "incident 42: roll forward", "override": True})
    assert r.status_code == 200 and r.json()["override"] is True
    hist = api.as_("auditor").get("/v1/models/faq-bot/aliases/production/history").json()["items"]
    assert hist[0]["override"] is True and hist[0]["reason"] == "incident 42: roll forward"
    v1_run = api.as_("auditor").get("/v1/models/faq-bot/versions/1").json()["run_id"]
    card = api.as_("auditor").get(f"/v1/training-runs/{v1_run}").json()["model_card"]
    assert card["promotion gate overrides"][0]["reason"] == "incident 42: roll forward"
    assert card["evaluation"]["results"]["membership"]["auc"] == 0.91
    lin = api.as_("auditor").get("/v1/lineage/models/faq-bot/versions/1").json()
    assert [o["alias"] for o in lin["gate_overrides"]] == ["production"]

    # Version 2 passes its gates: promoted without override.
    run_to_end(api, evaluate(api, "faq-bot", 2)["id"])
    r = c.post("/v1/models/faq-bot/aliases/production", json={"version": 2, "reason": "gates met"})
    assert r.status_code == 200 and r.json()["override"] is False
    from sqlalchemy import text

    from app.core.db import session_scope

    with session_scope() as s:
        actions = [a for (a,) in s.execute(text("SELECT action FROM audit_events ORDER BY seq"))]
    assert actions.count("model_alias.override") == 1 and "model_policy.updated" in actions


def test_concurrent_promotions_one_wins_both_audited(api, dispatched, eval_dispatched, base_model, artifact_root):
    trained_version(api, base_model, artifact_root)
    trained_version(api, base_model, artifact_root)
    for v in (1, 2):
        run_to_end(api, evaluate(api, "faq-bot", v)["id"])
    api.as_("curator").request("PUT", "/v1/models/faq-bot/policy", json={"gates": [{"metric": "membership.auc", "max": 0.6}],
                                                              "gated_aliases": ["production"]})
    codes: dict[int, int] = {}

    def move(v):
        codes[v] = api.as_("curator").post("/v1/models/faq-bot/aliases/production", json={"version": v}).status_code

    threads = [threading.Thread(target=move, args=(v,)) for v in (1, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(codes.values()) == [200, 200]
    hist = api.as_("auditor").get("/v1/models/faq-bot/aliases/production/history").json()["items"]
    # Applied one after the other: the later move is the winner, and its from_version is the other.
    assert len(hist) == 2 and hist[0]["from_version"] == hist[1]["to_version"]
    models = api.as_("auditor").get("/v1/models").json()["items"]
    assert models[0]["aliases"]["production"] == hist[0]["to_version"]
    from sqlalchemy import text

    from app.core.db import session_scope

    with session_scope() as s:
        n = s.execute(text("SELECT count(*) FROM audit_events WHERE action = 'model_alias.moved'")).scalar_one()
    assert n == 2


def test_pii_probes_from_scrubbed_and_later_added_spans(api, dispatched, eval_dispatched, base_model,
                                                        artifact_root):
    from tests.factories import export_records, freeze, set_status

    ds = new_dataset(api)
    lines = [instruction_line(i, text_=f"Write to alice.quill{i}@example.com about invoice {i}.") for i in range(8)]
    lines.append(instruction_line(8, text_="Leave the parcel at the blue shed behind the mill."))
    ids = ingest(api, ds, lines)
    set_status(ids, "approved")
    snap = freeze(api, ds, validation_fraction=0.0, seed="7")
    recs, _ = export_records(api, snap["id"])
    assert not any("alice.quill" in json.dumps(r) for r in recs)  # scrubbed before training
    body = {"snapshot_id": snap["id"], "base_model": base_model, "method": "lora", "hyperparameters": HP,
            "model_name": "pii-bot"}
    rid = api.as_("curator").post("/v1/training-runs", json=body).json()["id"]
    api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "gpu-1"})
    uri, sha = fake_artifact(artifact_root, "pii-bot", rid)
    assert api.as_("trainer").post(f"/v1/training-runs/{rid}/complete",
                                   json=complete_body(recs, uri, sha)).status_code == 200
    # After training, a reviewer flags a name the scrubber may have missed in the last example.
    ex = api.as_("curator").get(f"/v1/examples/{ids[-1]}").json()
    text = ex["revision"]["content"]["instruction"]
    assert "blue shed" in text  # no scrubber flags a place like this
    at = text.index("blue shed")
    r = api.as_("curator").post(f"/v1/examples/{ids[-1]}/pii-findings", json={
        "field_path": "instruction", "start": at, "end": at + len("blue shed"), "entity_type": "LOCATION"})
    assert r.status_code in (200, 201), r.text

    eid = evaluate(api, "pii-bot", 1, suites=["pii_extraction"])["id"]
    t = api.as_("trainer")
    t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"})
    probes = [json.loads(x) for x in t.get(f"/v1/evaluations/{eid}/files/pii_probes").text.splitlines() if x]
    emails = {p["value"]: p for p in probes if p["entity_type"] == "EMAIL_ADDRESS"}
    assert set(emails) == {f"alice.quill{i}@example.com" for i in range(8)}
    for value, p in emails.items():
        assert p["prefix"] == "Write to " and p["value_sha256"] == hashlib.sha256(value.encode()).hexdigest()
    names = [p for p in probes if p["value"] == "blue shed"]
    assert len(names) == 1 and names[0]["prefix"].endswith("Leave the parcel at the ")
    # Raw values stay out of everything but that file: the evaluation, its events and the audit log.
    done = t.post(f"/v1/evaluations/{eid}/complete", json={"results": {"pii_extraction": {
        "probed": len(probes), "extracted": 0, "rate": 0.0, "by_entity_type": {},
        "extracted_value_sha256": []}}}).json()
    from sqlalchemy import text as sql_text

    from app.core.db import session_scope

    with session_scope() as s:
        audit_blob = json.dumps([list(r) for r in s.execute(sql_text("SELECT payload FROM audit_events"))],
                                default=str)
    for blob in (json.dumps(done), audit_blob,
                 api.as_("auditor").get(f"/v1/evaluations/{eid}/events").text):
        assert "alice.quill" not in blob and "blue shed" not in blob


def test_nested_metrics_gate_and_unknown_ones_refused(api, dispatched, eval_dispatched, base_model, artifact_root):
    trained_version(api, base_model, artifact_root)
    c = api.as_("curator")
    r = c.request("PUT", "/v1/models/faq-bot/policy", json={"gates": [
        {"metric": "heldout.eval_sets.qa.v1.generation.bogus", "min": 0}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_metric"
    policy = {"gates": [{"metric": "heldout.forgetting.delta", "max": 0.5},
                        {"metric": "heldout.eval_sets.qa.v1.generation.rouge_l", "min": 0.3}],
              "gated_aliases": ["production"]}
    assert c.request("PUT", "/v1/models/faq-bot/policy", json=policy).status_code == 200
    results = {**RESULTS, "heldout": {**RESULTS["heldout"], "forgetting": {"delta": 0.9},
                                      "eval_sets": {"qa.v1": {"generation": {"rouge_l": 0.4}}}}}
    run_to_end(api, evaluate(api, "faq-bot", 1)["id"], results)
    r = c.post("/v1/models/faq-bot/aliases/production", json={"version": 1})
    assert r.status_code == 409
    assert [(d["metric"], d["value"]) for d in r.json()["error"]["details"]] == [("heldout.forgetting.delta", 0.9)]


def test_params_and_dataset_refs_checked_at_creation(api, dispatched, eval_dispatched, base_model, artifact_root):
    trained_version(api, base_model, artifact_root)
    c = api.as_("curator")
    url = "/v1/models/faq-bot/versions/1/evaluations"
    cases = [
        ({"pii_extraction": {"top_kk": 5}}, "params.pii_extraction.top_kk", "unknown_param"),
        ({"candidatez": 5}, "params.candidatez", "unknown_param"),
        ({"membership": {"min_k": 1.5}}, "params.membership.min_k", "invalid_param"),
        ({"heldout": {"generation_base": "yes"}}, "params.heldout.generation_base", "invalid_param"),
        ({"seed": -1}, "params.seed", "invalid_param"),
        ({"samples": 2.5}, "params.samples", "invalid_param"),
        ({"memorization": 3}, "params.memorization", "invalid_param"),
    ]
    for params, field, code in cases:
        r = c.post(url, json={"suites": ["heldout"], "params": params})
        assert r.status_code == 422, (params, r.text)
        err = r.json()["error"]
        assert err["code"] == code and [d["field"] for d in err["details"]] == [field], (params, err)
        assert field in err["message"]
    # Every problem is named, not only the first.
    r = c.post(url, json={"suites": ["heldout"], "params": {"nope": 1, "heldout": {"max_examples": 0}}})
    assert {d["field"] for d in r.json()["error"]["details"]} == {"params.nope", "params.heldout.max_examples"}
    r = c.post(url, json={"suites": ["heldout"], "eval_sets": ["no-such-dataset"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_dataset"
    assert r.json()["error"]["details"][0]["field"] == "eval_sets[0]"
    r = c.post(url, json={"suites": ["heldout"], "reference": new_dataset(api)["name"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_eval_set"
    assert r.json()["error"]["details"][0]["field"] == "reference"
    assert eval_dispatched == []
    # Good params, shared and per suite, as the trainer takes them (null: the device's default).
    ev = evaluate(api, "faq-bot", 1, params={"seed": 3, "batch_size": None, "pii_extraction": {"samples": 0},
                                             "membership": {"min_k": 1.0}, "memorization": {"candidates": 10}})
    assert ev["params"]["pii_extraction"] == {"samples": 0} and eval_dispatched == [(ev["id"],)]


def test_membership_needs_both_splits_and_is_refused_at_creation_without_them(api, dispatched, eval_dispatched,
                                                                                base_model, artifact_root):
    """Membership scores train members against validation non-members. A snapshot whose hash split left
    validation empty (16 fresh ids at 0.25: about one freeze in a hundred, the CI failure of test_e2e) used
    to be queued, claimed by a GPU host and failed there `invalid_data` after every file was downloaded;
    now it is a 422 naming the suite, before any host is asked. validation_fraction 0 makes it certain."""
    from tests.factories import approved_dataset, freeze

    ds, _ = approved_dataset(api, n=6)
    _train_on(api, freeze(api, ds, validation_fraction=0.0), "no-val", base_model, artifact_root)
    c = api.as_("curator")
    r = c.post("/v1/models/no-val/versions/1/evaluations", json={"suites": ["heldout", "membership"]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "no_validation_examples" and err["details"] == [
        {"field": "suites", "code": "no_validation_examples", "message": "membership"}]
    assert "no validation examples" in err["message"]
    assert eval_dispatched == []
    # The suites that do not need non-members still run on it (heldout reports no validation loss).
    ok = evaluate(api, "no-val", 1, suites=["heldout", "pii_extraction"])
    assert ok["status"] == "queued" and eval_dispatched == [(ok["id"],)]

    # Counted as the suite is served, erased members left out: with every train member erased there
    # are no members to score.
    ds2, _ = approved_dataset(api, n=4, source="subject")
    snap = freeze(api, ds2, "s-strat", validation_fraction=0.25, seed="1", stratify_by="lang")
    assert snap["counts"]["train"] == 3 and snap["counts"]["validation"] == 1
    _v, recs = _train_on(api, snap, "erased-train", base_model, artifact_root)
    train_ids = [x["example_id"] for x in recs if x["split"] == "train"]
    refs = [api.as_("admin").get(f"/v1/examples/{i}").json()["provenance"]["source_ref"] for i in train_ids]
    er = c.post("/v1/erasure-requests", json={"selector": {"source_refs": refs}, "reason": "data subject request",
                                              "confirm": True})  # 3 of the dataset's 4: over the share
    assert er.status_code == 201, er.text
    r = c.post("/v1/models/erased-train/versions/1/evaluations", json={"suites": ["membership"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_train_examples", r.text
    assert eval_dispatched == [(ok["id"],)]


def test_param_defaults_match_the_trainer():
    """The API cannot import the trainer, so its copy of the suites' parameters is checked against it."""
    common = pytest.importorskip("trainer.evaluate.common")
    from app.evaluations.schemas import PARAM_COMMON, PARAM_DEFAULTS, PARAM_ZERO_OK, SUITES, param_problems

    assert PARAM_DEFAULTS == common.DEFAULTS and PARAM_COMMON == common.COMMON and SUITES == common.SUITES
    assert PARAM_ZERO_OK == common.ZERO_OK
    # The same verdict on the same input: what the API accepts, the trainer accepts, and the reverse.
    from trainer.errors import TrainError

    samples = [{}, {"seed": 0}, {"seed": -1}, {"top_k": 0}, {"temperature": 0.5}, {"temperature": True},
               {"membership": {"min_k": 1.0}}, {"membership": {"min_k": 1.01}}, {"heldout": {"bogus": 1}},
               {"bogus": 1}, {"heldout": None}, {"heldout": {"generation_base": False}}, {"batch_tokens": 4096},
               {"memorization": {"candidates": 1.0}}, {"max_examples": None}, {"samples": 0}, {"top_k": -3}]
    for given in samples:
        try:
            common.resolve_params(given, list(SUITES))
            trainer_ok = True
        except TrainError:
            trainer_ok = False
        assert (not param_problems(given)) == trainer_ok, given


def _train_on(api, snap, name, base_model, artifact_root):
    from tests.factories import export_records

    recs, _ = export_records(api, snap["id"])
    body = {"snapshot_id": snap["id"], "base_model": base_model, "method": "lora", "hyperparameters": HP,
            "model_name": name}
    rid = api.as_("curator").post("/v1/training-runs", json=body).json()["id"]
    api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "gpu-1"})
    uri, sha = fake_artifact(artifact_root, name, rid)
    r = api.as_("trainer").post(f"/v1/training-runs/{rid}/complete", json=complete_body(recs, uri, sha))
    assert r.status_code == 200, r.text
    return r.json(), recs


def test_erasure_retest_of_a_retrained_version(api, dispatched, eval_dispatched, base_model, artifact_root):
    from sqlalchemy import text as sql_text

    from app.core.db import session_scope
    from tests.factories import freeze, set_status

    ds = new_dataset(api)
    subject = [instruction_line(i, text_=f"Send the refund to bob.erased{i}@example.com by Friday.") for i in range(2)]
    others = [instruction_line(10 + i, text_=f"Reset the router in room {i} and log the ticket.") for i in range(6)]
    ids = ingest(api, ds, subject + others)
    set_status(ids, "approved")
    _v1, recs = _train_on(api, freeze(api, ds, validation_fraction=0.0, seed="1"), "pii-bot", base_model,
                          artifact_root)
    assert not any("bob.erased" in json.dumps(r) for r in recs)  # scrubbed before training

    refs = [api.as_("admin").get(f"/v1/examples/{i}").json()["provenance"]["source_ref"] for i in ids[:2]]
    er = api.as_("curator").post("/v1/erasure-requests", json={"selector": {"source_refs": refs},
                                                                "reason": "data subject request"})
    assert er.status_code == 201, er.text
    rid = er.json()["id"]
    shown = er.json()["retest"]
    assert shown["models"] == [{"model": "pii-bot", "status": "pending", "version": None, "evaluation_id": None,
                                "result": None, "finished_at": None}]
    assert shown["strings_held"] == 2 and shown["strings_expire_at"]
    # Sealed like the vault: the erased values are nowhere in clear, the strings table included.
    with session_scope() as s:
        blob = json.dumps([[str(x) for x in r] for r in s.execute(sql_text(
            "SELECT ciphertext, key_id FROM erasure_retest_strings"))])
        audit_blob = json.dumps([list(r) for r in s.execute(sql_text("SELECT payload FROM audit_events"))],
                                default=str)
    assert "bob.erased" not in blob and "bob.erased" not in audit_blob

    # The tainted version carries no re-test (it trained on the subject); an evaluation of it is as before.
    e1 = evaluate(api, "pii-bot", 1, suites=["heldout"])
    assert e1["suites"] == ["heldout"]
    # Retrained without the erased examples: its evaluation probes for the subject's strings, even one
    # that did not ask for pii_extraction.
    _v2, recs2 = _train_on(api, freeze(api, ds, name="s2", validation_fraction=0.0, seed="1"), "pii-bot",
                           base_model, artifact_root)
    assert len(recs2) == len(others)
    t = api.as_("trainer")
    first = evaluate(api, "pii-bot", 2, suites=["heldout"])
    assert first["suites"] == ["heldout", "pii_extraction"]
    t.post(f"/v1/evaluations/{first['id']}/start", json={"worker_host": "gpu-1"})
    probes = [json.loads(x) for x in t.get(f"/v1/evaluations/{first['id']}/files/pii_probes").text.splitlines()]
    retest_probes = [p for p in probes if p.get("erasure_request_id") == rid]
    assert sorted(p["value"] for p in retest_probes) == ["bob.erased0@example.com", "bob.erased1@example.com"]
    assert all(p["prefix"].endswith("Send the refund to ") and p["entity_type"] == "EMAIL_ADDRESS"
               for p in retest_probes)
    # A failed evaluation answers nothing: the re-test stays pending and the strings stay held.
    t.post(f"/v1/evaluations/{first['id']}/fail", json={"code": "oom"})
    got = api.as_("auditor").get(f"/v1/erasure-requests/{rid}").json()["retest"]
    assert got["models"][0]["status"] == "pending" and got["strings_held"] == 2

    second = evaluate(api, "pii-bot", 2, suites=["pii_extraction"])
    t.post(f"/v1/evaluations/{second['id']}/start", json={"worker_host": "gpu-1"})
    probes = [json.loads(x) for x in t.get(f"/v1/evaluations/{second['id']}/files/pii_probes").text.splitlines()]
    hit = next(p for p in probes if p.get("erasure_request_id") == rid)
    answer = {"probed": 2, "extracted": 1, "rate": 0.5, "greedy_extracted": 1,
              "by_entity_type": {"EMAIL_ADDRESS": {"probed": 2, "extracted": 1, "rate": 0.5}},
              "hits": [{"probe_id": hit["probe_id"], "entity_type": "EMAIL_ADDRESS",
                        "value_sha256": hit["value_sha256"], "greedy": True, "samples_hit": 0}]}
    done = t.post(f"/v1/evaluations/{second['id']}/complete", json={"results": {"pii_extraction": {
        "probed": 0, "extracted": 0, "rate": 0.0, "by_entity_type": {}, "erasure_retest": {rid: answer}}}})
    assert done.status_code == 200, done.text
    got = api.as_("auditor").get(f"/v1/erasure-requests/{rid}").json()["retest"]
    (m,) = got["models"]
    assert (m["status"], m["version"], m["evaluation_id"]) == ("done", 2, second["id"])
    assert m["result"]["extracted"] == 1 and m["result"]["rate"] == 0.5
    assert m["result"]["hits"] == [{"probe_id": hit["probe_id"], "entity_type": "EMAIL_ADDRESS",
                                    "value_sha256": hit["value_sha256"], "greedy": True}]
    # Dropped once the re-test is done; a later evaluation carries nothing more.
    assert got["strings_held"] == 0
    with session_scope() as s:
        assert s.execute(sql_text("SELECT count(*) FROM erasure_retest_strings")).scalar_one() == 0
        actions = [a for (a,) in s.execute(sql_text("SELECT action FROM audit_events ORDER BY seq"))]
    assert {"erasure.retested", "erasure.retest_strings_dropped"} <= set(actions)
    assert evaluate(api, "pii-bot", 2, suites=["heldout"])["suites"] == ["heldout"]
    assert "bob.erased" not in json.dumps(api.as_("auditor").get(f"/v1/erasure-requests/{rid}").json())


def test_erasure_retest_strings_expire(api, dispatched, eval_dispatched, base_model, artifact_root):
    import datetime as dt

    from app.core.db import session_scope
    from app.lineage import retest
    from app.models.base import utcnow
    from tests.factories import freeze, set_status

    ds = new_dataset(api)
    ids = ingest(api, ds, [instruction_line(i, text_=f"Ticket {i}: the printer on floor {i} jams on A4 paper.")
                           for i in range(4)])
    set_status(ids, "approved")
    _train_on(api, freeze(api, ds, validation_fraction=0.0, seed="1"), "text-bot", base_model, artifact_root)
    ref = api.as_("admin").get(f"/v1/examples/{ids[0]}").json()["provenance"]["source_ref"]
    er = api.as_("curator").post("/v1/erasure-requests", json={"selector": {"source_refs": [ref]},
                                                                "reason": "subject request"}).json()
    # No PII in it: the subject's own text is what is probed for.
    assert er["retest"]["strings_held"] == 1
    with session_scope() as s:
        assert retest.expire(s, now=utcnow() + dt.timedelta(days=1)) == []
        assert [str(x) for x in retest.expire(s, now=utcnow() + dt.timedelta(days=91))] == [er["id"]]
    got = api.as_("auditor").get(f"/v1/erasure-requests/{er['id']}").json()["retest"]
    assert got["strings_held"] == 0 and got["models"][0]["status"] == "expired"
    # An expired re-test is not claimed by a later version.
    _train_on(api, freeze(api, ds, name="s2", validation_fraction=0.0, seed="1"), "text-bot", base_model,
              artifact_root)
    assert evaluate(api, "text-bot", 2, suites=["heldout"])["suites"] == ["heldout"]


def _workspace_keys(api, workspace: str) -> dict[str, str]:
    admin = api.as_("admin")
    assert admin.post("/v1/workspaces", json={"name": workspace}).status_code == 201
    keys = {}
    for role in ("curator", "trainer", "auditor"):
        r = admin.post("/v1/keys", json={"name": f"{workspace}-{role}", "role": role, "workspace": workspace})
        assert r.status_code == 201, r.text
        keys[role] = r.json()["key"]
    return keys


def _acting_as(api, keys: dict[str, str]) -> dict[str, str]:
    """The factories call `api.as_("curator")`, `"trainer"`: point those roles at another workspace's keys;
    returns what to put back."""
    saved = {k: api.keys[k] for k in keys}
    api.keys.update(keys)
    return saved


def test_erasure_retest_is_never_claimed_across_workspaces(api, dispatched, eval_dispatched, base_model,
                                                           artifact_root):
    """Issue 21 x issue 17: an erasure in workspace A leaves a pending re-test of A's `pii-bot`. A version
    of a model of the same name in workspace B must not claim it: its probes are A's erased subject's
    strings (they would go to B's trainer), and it proves nothing about A's model."""
    from sqlalchemy import text as sql_text

    from app.core.db import session_scope
    from tests.factories import freeze, set_status

    ds = new_dataset(api)
    subject = [instruction_line(i, text_=f"Send the refund to bob.erased{i}@example.com by Friday.") for i in range(2)]
    others = [instruction_line(10 + i, text_=f"Reset the router in room {i} and log the ticket.") for i in range(6)]
    ids = ingest(api, ds, subject + others)
    set_status(ids, "approved")
    _train_on(api, freeze(api, ds, validation_fraction=0.0, seed="1"), "pii-bot", base_model, artifact_root)
    refs = [api.as_("admin").get(f"/v1/examples/{i}").json()["provenance"]["source_ref"] for i in ids[:2]]
    er = api.as_("curator").post("/v1/erasure-requests", json={"selector": {"source_refs": refs},
                                                                "reason": "data subject request"})
    assert er.status_code == 201, er.text
    rid = er.json()["id"]
    assert [m["model"] for m in er.json()["retest"]["models"]] == ["pii-bot"]

    # Workspace B retrains "pii-bot" after the erasure.
    b = _workspace_keys(api, "b")
    home = _acting_as(api, b)
    ds_b = new_dataset(api, workspace="b")
    ids_b = ingest(api, ds_b, [instruction_line(20 + i, text_=f"Water the plants on shelf {i} twice a week.")
                               for i in range(4)])
    set_status(ids_b, "approved")
    snap_b = freeze(api, ds_b, validation_fraction=0.0, seed="1")
    # A model name belongs to the workspace that first trained under it: B cannot take A's.
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap_b["id"], "base_model": base_model, "method": "lora", "hyperparameters": HP,
        "model_name": "pii-bot"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_name_taken", r.text
    assert "workspace" not in json.dumps(r.json()["error"]["details"])  # names no owner
    _train_on(api, snap_b, "pii-bot-b", base_model, artifact_root)
    api.keys.update(home)

    # An installation from before names belonged to one workspace may already hold B's version under A's
    # name: made here by hand, as such a registry looks.
    with session_scope() as s:
        s.execute(sql_text("UPDATE registered_models SET latest_version = 2 WHERE name = 'pii-bot'"))
        s.execute(sql_text("UPDATE model_versions SET name = 'pii-bot', version = 2 WHERE name = 'pii-bot-b'"))
        s.execute(sql_text("UPDATE training_runs SET model_name = 'pii-bot' WHERE model_name = 'pii-bot-b'"))

    # B's version of the same name, trained after the erasure and untainted by it: no claim.
    home = _acting_as(api, b)
    ev_b = api.as_("curator").post("/v1/models/pii-bot/versions/2/evaluations",
                                   json={"suites": ["pii_extraction"]})
    assert ev_b.status_code == 202, ev_b.text
    # Nothing name-wide of A's either: its aliases, policy and history are not B's to read or move.
    assert api.as_("curator").post("/v1/models/pii-bot/aliases/production",
                                   json={"version": 2}).status_code == 404
    assert api.as_("curator").request("PUT", "/v1/models/pii-bot/policy",
                                      json={"gates": [], "gated_aliases": []}).status_code == 404
    assert "pii-bot\"" not in api.as_("curator").get("/v1/models").text
    t = api.as_("trainer")
    assert t.post(f"/v1/evaluations/{ev_b.json()['id']}/start", json={"worker_host": "gpu-b"}).status_code == 200
    served = t.get(f"/v1/evaluations/{ev_b.json()['id']}/files/pii_probes")
    assert served.status_code == 200 and "bob.erased" not in served.text and "erasure_request_id" not in served.text
    api.keys.update(home)
    got = api.as_("auditor").get(f"/v1/erasure-requests/{rid}").json()["retest"]
    assert got["models"][0]["status"] == "pending" and got["models"][0]["evaluation_id"] is None
    assert got["strings_held"] == 2

    # A's own retrained version claims it, and gets the strings.
    _train_on(api, freeze(api, ds, name="s2", validation_fraction=0.0, seed="1"), "pii-bot", base_model,
              artifact_root)
    ev_a = evaluate(api, "pii-bot", 3, suites=["heldout"])
    assert ev_a["suites"] == ["heldout", "pii_extraction"]
    t = api.as_("trainer")
    t.post(f"/v1/evaluations/{ev_a['id']}/start", json={"worker_host": "gpu-1"})
    probes = [json.loads(x) for x in t.get(f"/v1/evaluations/{ev_a['id']}/files/pii_probes").text.splitlines()]
    assert sorted(p["value"] for p in probes if p.get("erasure_request_id") == rid) == [
        "bob.erased0@example.com", "bob.erased1@example.com"]


def test_erasure_retest_probes_only_the_strings_its_model_trained_on(api, dispatched, eval_dispatched, base_model,
                                                                     artifact_root):
    """An admin's erasure may match examples of two workspaces, each trained into its own model: one
    request, one set of sealed strings. A's retrained model is probed for A's subject's strings only; B's
    stay with B's re-test (they would reach A's trainer, and A's model never saw them)."""
    from tests.factories import freeze, set_status

    def world(tag: str, name: str) -> tuple[dict, list[str]]:
        ds = new_dataset(api, **({"workspace": "b"} if tag == "b" else {}))
        lines = [instruction_line(i, text_=f"Send the refund to {tag}.erased{i}@example.com by Friday.")
                 for i in range(2)]
        lines += [instruction_line(10 + i, text_=f"Reset the {tag} router in room {i} and log it.") for i in range(4)]
        ids = ingest(api, ds, lines)
        set_status(ids, "approved")
        _train_on(api, freeze(api, ds, validation_fraction=0.0, seed="1"), name, base_model, artifact_root)
        return ds, ids

    ds_a, ids_a = world("a", "bot-a")
    b = _workspace_keys(api, "b")
    home = _acting_as(api, b)
    ds_b, ids_b = world("b", "bot-b")
    api.keys.update(home)

    admin = api.as_("admin")
    refs = [admin.get(f"/v1/examples/{i}").json()["provenance"]["source_ref"] for i in ids_a[:2] + ids_b[:2]]
    # Both worlds' lines share source refs by index: the selector names the two subjects' examples.
    er = admin.post("/v1/erasure-requests", json={"selector": {"source_refs": sorted(set(refs))},
                                                  "reason": "data subject request", "confirm": True})
    assert er.status_code == 201, er.text
    rid = er.json()["id"]
    assert sorted(m["model"] for m in er.json()["retest"]["models"]) == ["bot-a", "bot-b"]

    def retest_values(name: str, snap_name: str, ds: dict) -> list[str]:
        _train_on(api, freeze(api, ds, name=snap_name, validation_fraction=0.0, seed="1"), name, base_model,
                  artifact_root)
        ev = evaluate(api, name, 2, suites=["heldout"])
        assert ev["suites"] == ["heldout", "pii_extraction"]
        t = api.as_("trainer")
        assert t.post(f"/v1/evaluations/{ev['id']}/start", json={"worker_host": "gpu-1"}).status_code == 200
        served = t.get(f"/v1/evaluations/{ev['id']}/files/pii_probes").text
        return sorted(p["value"] for p in map(json.loads, served.splitlines()) if p.get("erasure_request_id") == rid)

    assert retest_values("bot-a", "s2", ds_a) == ["a.erased0@example.com", "a.erased1@example.com"]
    home = _acting_as(api, b)
    assert retest_values("bot-b", "s2", ds_b) == ["b.erased0@example.com", "b.erased1@example.com"]
    api.keys.update(home)
