"""The embedded default (no Redis): a run started through the API trains in-process (a background
thread running `python -m trainer train` as a child) and registers its version, with no trainer worker."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.factories import snapshot

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny-embedded") / "model"
    subprocess.run([sys.executable, "-m", "trainer", "make-tiny", str(path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return str(path)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_embedded_run_trains_in_process(db, api, artifact_root, tiny_base):
    from app.core.config import get_settings
    from app.training import embedded

    assert get_settings().tasks_eager  # no Redis: nothing would consume a `train` queue
    snap, recs = snapshot(api, n=10)
    t0 = time.time()
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": tiny_base, "model_name": "embedded-tiny",
        "hyperparameters": {"max_steps": 2, "batch_tokens": 1024, "max_seq_len": 256}})
    assert r.status_code == 201, r.text
    assert time.time() - t0 < 10  # the request does not wait for training
    rid = r.json()["id"]
    embedded.wait(rid, timeout=300)
    run = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
    assert run["status"] == "succeeded", run
    assert run["worker_host"].startswith("embedded:")
    assert run["model_version"]["version"] == 1
    events = api.as_("auditor").get(f"/v1/training-runs/{rid}/events", params={"kind": "metrics"}).json()["items"]
    assert events and any("train_loss" in e["data"] for e in events)
    art = api.as_("auditor").get("/v1/models/embedded-tiny/versions/1/artifact")
    with tarfile.open(fileobj=io.BytesIO(art.content), mode="r:gz") as tar:
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(tar.getnames())
        card = tar.extractfile("README.md").read().decode()
    assert snap["manifest_sha256"] in card and "helpdesk" in card  # lineage facts in the model card
    from sqlalchemy import text

    from app.core.db import session_scope

    train_revs = {r["revision_id"].replace("-", "") for r in recs if r["split"] == "train"}
    with session_scope() as s:
        got = {str(x).replace("-", "") for (x,) in s.execute(text("SELECT revision_id FROM lineage"))}
    assert got and got <= train_revs


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_embedded_run_cancelled_midway_stops_the_child(db, api, artifact_root, tiny_base):
    from app.training import embedded

    snap, _ = snapshot(api, n=10)
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": tiny_base, "model_name": "embedded-long",
        "hyperparameters": {"max_steps": 100000, "epochs": 1000, "batch_tokens": 1024, "max_seq_len": 256}})
    rid = r.json()["id"]
    deadline = time.time() + 180
    while time.time() < deadline:
        run = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
        if run["status"] == "running" and run["metrics"].get("step"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"never started training: {run}")
    assert api.as_("curator").post(f"/v1/training-runs/{rid}/cancel").status_code == 200
    t0 = time.time()
    embedded.wait(rid, timeout=120)
    assert not embedded._threads[rid].is_alive(), "the in-process runner did not stop"
    stopped_in = time.time() - t0
    run = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
    assert run["status"] == "cancelled" and run["model_version"] is None
    assert api.as_("auditor").get("/v1/models/embedded-long/versions").status_code == 404
    assert stopped_in < 60, stopped_in


def test_embedded_cancel_kills_a_child_that_ignores_the_stop_file(db, api, artifact_root, tiny_base, monkeypatch):
    """A child stuck inside one step never reads the stop file: after the grace period the runner ends
    it, as the GPU worker does, instead of holding the run (and the one-run-at-a-time lock) forever."""
    from app.training import embedded

    pid_file = artifact_root / "stuck-child.pid"
    stuck = (f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
             "[time.sleep(1) for _ in range(600)]")
    monkeypatch.setattr(embedded, "train_command", lambda *a: [sys.executable, "-c", stuck])
    monkeypatch.setattr(embedded, "CANCEL_GRACE_S", 1.0)
    snap, _ = snapshot(api, n=4)
    rid = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": tiny_base, "model_name": "embedded-stuck"}).json()["id"]
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "the stand-in child never started"
    assert api.as_("curator").post(f"/v1/training-runs/{rid}/cancel").status_code == 200
    embedded.wait(rid, timeout=60)
    assert not embedded._threads[rid].is_alive(), "the runner is still waiting on a child that ignores the stop file"
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert api.as_("auditor").get(f"/v1/training-runs/{rid}").json()["status"] == "cancelled"


def test_embedded_and_gpu_worker_speak_the_same_child_protocol(tmp_path, monkeypatch):
    """The API may not import the trainer, so the two supervisors of `python -m trainer train` keep
    their own copies of the protocol (docs/trainer.md, "The child protocol"); this holds them equal."""
    monkeypatch.setenv("PEDIGREE_TRAINER_KEY", "k")  # trainer.worker reads its settings when imported
    from app.training import embedded
    from trainer import worker

    paths = [tmp_path / n for n in ("spec.json", "export.jsonl", "out", "events.jsonl", "stop")]
    assert embedded.train_command(*paths) == worker.train_command(*paths, gpus=1)
    assert "--exit-with-parent" in embedded.train_command(*paths)

    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"kind": "log", "level": "info", "message": "export verified", "step": null, "data": {}, "at": 1.5}\n'
        b"not json\n"
        b'{"kind": "metrics", "level": "info", "message": "step 1/2", "step": 1, "data": {"train_loss": 2.0}}\n'
        b'{"kind": "heartbeat", "mess'  # half-written: left for the next read
    )
    offset, got = embedded.read_events(events, 0)
    assert (offset, got) == worker.read_events(events, 0)
    assert [e["kind"] for e in got] == ["log", "metrics"] and all(set(e) == set(worker.EVENT_KEYS) for e in got)
    assert embedded.EVENT_KEYS == worker.EVENT_KEYS
    with open(events, "ab") as f:
        f.write(b'sage": "training", "step": 1}\n')
    assert embedded.read_events(events, offset) == worker.read_events(events, offset)
    assert embedded.read_events(events, offset)[1][0]["kind"] == "heartbeat"
