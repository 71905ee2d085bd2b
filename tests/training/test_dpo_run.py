"""method "dpo" through the API: refusals at submission, and a run on a preference snapshot trained by the
embedded runner (`python -m trainer train` as a child, the tiny model on the CPU) with DPO metrics events and
one lineage row per preference revision."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import freeze, ingest, new_dataset, snapshot

ROOT = Path(__file__).resolve().parents[2]


def _pref_snapshot(api, n=12):
    from tests.factories import set_status

    ds = new_dataset(api, "preference")
    rows = [{"prompt": f"Question {i}: which answer is kind?", "chosen": f"The kind answer {i}.",
             "rejected": f"A rude answer, number {i}!", "provenance": {"source": "s", "source_ref": f"p{i}"}}
            for i in range(n)]
    set_status(ingest(api, ds, rows), "approved")
    # Stratified (one stratum): exactly round(0.2 * n) in validation, never all n (a 422 no_train_examples).
    return freeze(api, ds, validation_fraction=0.2, seed="3", stratify_by="lang")


def test_dpo_on_another_format_and_bad_beta_are_422(api, dispatched, base_model):
    snap, _ = snapshot(api, n=6)
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": base_model, "model_name": "m", "method": "dpo"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "method_format_mismatch", r.text
    assert r.json()["error"]["details"][0]["field"] == "method"
    pref = _pref_snapshot(api, n=4)
    for beta in (0, -0.5, 11, "x"):
        r = api.as_("curator").post("/v1/training-runs", json={
            "snapshot_id": pref["id"], "base_model": base_model, "model_name": "m", "method": "dpo",
            "hyperparameters": {"beta": beta}})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "hyperparameters.beta", r.text
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": pref["id"], "base_model": base_model, "model_name": "m", "method": "dpo",
        "hyperparameters": {"beta": 0.2, "loss_type": "ipo"}})
    assert r.status_code == 201, r.text
    assert r.json()["method"] == "dpo" and r.json()["hyperparameters"] == {"beta": 0.2, "loss_type": "ipo"}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny-dpo") / "model"
    subprocess.run([sys.executable, "-m", "trainer", "make-tiny", str(path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return str(path)


@pytest.mark.train
@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_dpo_run_trains_and_writes_lineage_for_both_answers(db, api, artifact_root, tiny_base):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from sqlalchemy import text

    from app.core.db import session_scope
    from app.training import embedded

    snap = _pref_snapshot(api)
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": tiny_base, "model_name": "dpo-tiny", "method": "dpo",
        "hyperparameters": {"epochs": 2, "batch_tokens": 1024, "max_seq_len": 128, "log_every": 1,
                            "learning_rate": 5e-3, "beta": 0.1}})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    t0 = time.time()
    embedded.wait(rid, timeout=300)
    run = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
    assert run["status"] == "succeeded", run
    assert run["metrics"]["method"] == "dpo" and "rewards_accuracy" in run["metrics"]
    events = api.as_("auditor").get(f"/v1/training-runs/{rid}/events", params={"kind": "metrics"}).json()["items"]
    steps = [e["data"] for e in events if "dpo_loss" in e["data"]]
    assert steps and all("rewards_accuracy" in d and "rewards_margin" in d for d in steps)
    recs = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export").content.splitlines()
    import json

    train = {json.loads(x)["revision_id"]: json.loads(x) for x in recs if b'"split":"train"' in x}
    with session_scope() as s:
        rows = s.execute(text("SELECT revision_id, tokens, epochs FROM lineage")).all()
    got = {str(x.revision_id).replace("-", ""): x for x in rows}
    assert got.keys() == {k.replace("-", "") for k in train}
    # Each row counts both answers' sequences (prompt rendered twice) over both epochs.
    for rid_, rec in train.items():
        c = rec["content"]
        row = got[rid_.replace("-", "")]
        assert row.epochs == 2 and row.tokens > 2 * (len(c["chosen"]) + len(c["rejected"]) + 2 * len(c["prompt"]))
    assert time.time() - t0 < 300


@pytest.mark.train
@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_full_run_registers_the_whole_model(db, api, artifact_root, tiny_base):
    """method full through the API: the registered artifact is the whole model (shards, tokenizer, sha256
    per file, the model card), downloadable like an adapter; lineage as for LoRA."""
    pytest.importorskip("torch")
    import io
    import json
    import tarfile

    from app.training import embedded

    snap, _ = snapshot(api, n=10)
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": tiny_base, "model_name": "full-tiny", "method": "full",
        "hyperparameters": {"max_steps": 2, "batch_tokens": 1024, "max_seq_len": 256}})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    embedded.wait(rid, timeout=300)
    run = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
    assert run["status"] == "succeeded", run
    art = api.as_("auditor").get("/v1/models/full-tiny/versions/1/artifact")
    assert art.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(art.content), mode="r:gz") as tar:
        names = set(tar.getnames())
        files = json.loads(tar.extractfile("pedigree_files.json").read())
        card = tar.extractfile("README.md").read().decode()
    assert {"config.json", "tokenizer.json", "README.md"} <= names and any(n.endswith(".safetensors") for n in names)
    assert set(files) <= names and snap["manifest_sha256"] in card
    assert not any(n.startswith("adapter_") for n in names)
