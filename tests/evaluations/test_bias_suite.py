"""The `bias` suite through the evaluation API: refused without the CrowS-Pairs file, served to the trainer as
JSON lines while it runs, and gated on `bias.stereotype_score_delta` (docs/bias.md). The suite's figures
on a real model are tested in tests/trainer/test_evaluate_bias.py."""

from __future__ import annotations

import json

from tests.evaluations.test_api import evaluate, trained_version
from tests.factories import corpora_file

BIAS = {"stereotype_score": 0.61, "base_stereotype_score": 0.55, "stereotype_score_delta": 0.06, "pairs": 1508,
        "by_type": {}}


def _use_crows(monkeypatch, path):
    from app.core.config import reset_settings

    monkeypatch.setenv("PEDIGREE_CROWS_PAIRS_PATH", str(path))
    reset_settings()


def test_bias_suite_files_and_gate(api, dispatched, eval_dispatched, base_model, artifact_root, monkeypatch,
                                   tmp_path):
    trained_version(api, base_model, artifact_root)
    c = api.as_("curator")
    # Not configured, or configured to a file without CrowS-Pairs' columns: refused at creation.
    r = c.post("/v1/models/faq-bot/versions/1/evaluations", json={"suites": ["bias"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bias_corpus_missing"
    assert r.json()["error"]["details"][0]["field"] == "suites"
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    _use_crows(monkeypatch, wrong)
    r = c.post("/v1/models/faq-bot/versions/1/evaluations", json={"suites": ["bias"]})
    assert r.status_code == 422 and "sent_more" in r.json()["error"]["message"]
    r = c.post("/v1/models/faq-bot/versions/1/evaluations", json={"suites": ["bias"], "params": {"bias": {"pairs": 3}}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_param"
    assert eval_dispatched == []

    _use_crows(monkeypatch, corpora_file("bias/crows_pairs_anonymized.csv"))
    eid = evaluate(api, "faq-bot", 1, suites=["bias"], params={"bias": {"max_pairs": 100}})["id"]
    t = api.as_("trainer")
    assert t.get(f"/v1/evaluations/{eid}/files/bias_pairs").status_code == 409  # only while running
    assert t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"}).status_code == 200
    spec = t.get(f"/v1/evaluations/{eid}/spec").json()
    assert spec["files"]["bias_pairs"] == "bias_pairs" and spec["params"] == {"bias": {"max_pairs": 100}}
    r = t.get(f"/v1/evaluations/{eid}/files/bias_pairs")
    assert r.status_code == 200
    pairs = [json.loads(x) for x in r.text.splitlines() if x]
    assert len(pairs) == 1508 and set(pairs[0]) == {"pair_id", "sent_more", "sent_less", "stereo_antistereo",
                                                    "bias_type"}
    assert {p["bias_type"] for p in pairs} == {"race-color", "gender", "socioeconomic", "nationality", "religion",
                                               "age", "sexual-orientation", "physical-appearance", "disability"}

    # The gate: more than 2 points of added stereotype preference blocks production.
    policy = {"gates": [{"metric": "bias.stereotype_score_delta", "max": 0.02}], "gated_aliases": ["production"]}
    assert c.request("PUT", "/v1/models/faq-bot/policy", json=policy).status_code == 200
    assert t.post(f"/v1/evaluations/{eid}/complete", json={"results": {"bias": BIAS}}).status_code == 200
    r = c.post("/v1/models/faq-bot/aliases/production", json={"version": 1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
    assert [(d["metric"], d["value"], d["limit"]) for d in r.json()["error"]["details"]] == [
        ("bias.stereotype_score_delta", 0.06, 0.02)]
    eid = evaluate(api, "faq-bot", 1, suites=["bias"])["id"]
    t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"})
    t.post(f"/v1/evaluations/{eid}/complete", json={"results": {"bias": {**BIAS, "stereotype_score_delta": -0.01}}})
    assert c.post("/v1/models/faq-bot/aliases/production", json={"version": 1}).status_code == 200
