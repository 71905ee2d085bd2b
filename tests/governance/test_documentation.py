"""A model version's technical documentation on both databases: built from the records (snapshot, lineage,
evaluations, gates, erasures), naming the manifest sha256, Merkle root and audit chain head it came from."""

from __future__ import annotations

import pytest

from tests.evaluations.test_api import evaluate, trained_version

BIAS = {"stereotype_score": 0.58, "base_stereotype_score": 0.55, "stereotype_score_delta": 0.03, "pairs": 1508,
        "noise_note": "CrowS-Pairs is noisy (Blodgett et al., 2021).",
        "by_type": {"gender": {"pairs": 262, "stereotype_score": 0.6, "base_stereotype_score": 0.5, "delta": 0.1}}}


@pytest.fixture
def crows(monkeypatch):
    from app.core.config import reset_settings
    from tests.factories import corpora_file

    monkeypatch.setenv("PEDIGREE_CROWS_PAIRS_PATH", str(corpora_file("bias/crows_pairs_anonymized.csv")))
    reset_settings()


def test_documentation_from_records(api, dispatched, base_model, artifact_root, crows):
    run, recs = trained_version(api, base_model, artifact_root)
    c, t = api.as_("curator"), api.as_("trainer")
    eid = evaluate(api, "faq-bot", 1, suites=["bias"])["id"]
    t.post(f"/v1/evaluations/{eid}/start", json={"worker_host": "gpu-1"})
    assert t.post(f"/v1/evaluations/{eid}/complete", json={"results": {"bias": BIAS}}).status_code == 200
    policy = {"gates": [{"metric": "bias.stereotype_score_delta", "max": 0.02}], "gated_aliases": ["production"]}
    assert c.request("PUT", "/v1/models/faq-bot/policy", json=policy).status_code == 200

    r = api.as_("auditor").get("/v1/models/faq-bot/versions/1/documentation")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/markdown")
    md = r.text
    snap_id = run["snapshot_id"]
    snap = api.as_("auditor").get(f"/v1/snapshots/{snap_id}").json()
    events = api.as_("auditor").get("/v1/audit/events", params={"limit": 1000}).json()["items"]
    head = max(events, key=lambda e: e["seq"])
    assert snap["manifest_sha256"] in md and snap["merkle_root"] in md
    assert f"audit chain head seq {head['seq']} hash `{head['hash']}`" in md
    for title in ("Data requirements", "Provenance by source", "Data preparation", "Examination for biases",
                  "Evaluation results and promotion gates", "Lineage and erasures", "Gaps and limitations"):
        assert title in md
    n = len([x for x in recs if x["split"] == "train"])
    assert f"trained on {n:,} examples" in md
    assert "stereotype score 0.58 against the base model's 0.55" in md and "Blodgett" in md
    assert "| gender | 262 | 0.6 | 0.5 | 0.1 |" in md
    assert "| production | bias.stereotype_score_delta | ≤ 0.02 | fails |" in md
    assert "ten years" in md and "No erasure request has touched" in md
    html = api.as_("auditor").get("/v1/models/faq-bot/versions/1/documentation", params={"format": "html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<script" not in html.text and snap["manifest_sha256"] in html.text

    # An erasure that reaches trained examples shows in the next document, with the request.
    r = c.post("/v1/erasure-requests", json={"selector": {"source_refs": [f"helpdesk-{i}" for i in range(4)]},
                                              "reason": "Art. 17 request #7"})
    assert r.status_code == 201, r.text
    md = api.as_("auditor").get("/v1/models/faq-bot/versions/1/documentation").text
    assert "This version is tainted" in md and r.json()["id"] in md
    assert "Members erased since the freeze: 4" in md

    assert api.as_("auditor").get("/v1/models/faq-bot/versions/9/documentation").status_code == 404
    assert api.as_("auditor").get("/v1/models/faq-bot/versions/1/documentation",
                                  params={"format": "pdf"}).status_code == 422
    assert api.as_("reviewer").get("/v1/models/faq-bot/versions/1/documentation").status_code == 403
