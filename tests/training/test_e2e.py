"""The whole training path with real processes: a uvicorn API on PostgreSQL sending the task through
Redis to a real `celery -A trainer.worker worker -Q train` process, which downloads the export over
HTTP, trains a tiny model on the CPU, uploads the adapter and reports back.

Then the fault the reaper exists for: the trainer is killed mid-run (SIGKILL to its process group),
the reaper fails the run as worker_lost, nothing is registered, a late report is refused, and a fresh
trainer picks up the next run.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import Api, approved_dataset, export_records, freeze, make_keys
from tests.support import redis_db_url

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = [pytest.mark.train, pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
# This xdist worker's "train" slot (tests/support.py, REDIS_SLOTS), so no trainer started by a test on
# another xdist worker takes these runs; the fixture flushes it.
BROKER = os.environ.get("PEDIGREE_TEST_TRAIN_REDIS") or redis_db_url("train")
SHORT = {"max_steps": 2, "batch_tokens": 1024, "max_seq_len": 256, "log_every": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([sys.executable, "-m", "trainer", "make-tiny", str(path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return str(path)


class Stack:
    def __init__(self, pg_url: str, tmp: Path):
        self.tmp, self.port = tmp, _free_port()
        self.artifacts = tmp / "artifacts"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PEDIGREE_DATABASE_URL": pg_url,
                    "PEDIGREE_REDIS_URL": BROKER, "PEDIGREE_ARTIFACT_ROOT": str(self.artifacts),
                    "PEDIGREE_EMBEDDED": "true", "PEDIGREE_SECRET_KEY": os.environ["PEDIGREE_SECRET_KEY"]}
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], log: str, **env: str) -> subprocess.Popen:
        # Own process group: killing the trainer kills its pool child and the training child with it.
        with open(self.tmp / log, "ab") as out:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen(args, cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def api(self) -> None:
        # JSON lines with the access log: the trainer's calls must carry the run's request id.
        self.spawn([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(self.port), "--log-level",
                    "info"], "api.log", PEDIGREE_LOG_FORMAT="json")
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.api_url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError((self.tmp / "api.log").read_text()[-3000:])

    def trainer(self, key: str, name: str) -> subprocess.Popen:
        return self.spawn([sys.executable, "-m", "celery", "-A", "trainer.worker", "worker", "-Q", "train",
                           "--concurrency", "1", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
                           "--loglevel", "INFO"], f"{name}.log", PEDIGREE_API_URL=self.api_url,
                          PEDIGREE_TRAINER_KEY=key, PEDIGREE_TRAINER_GPUS="0")

    @staticmethod
    def kill(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(p)


@pytest.fixture
def stack(pg: str, tmp_path: Path) -> Iterator[tuple[Stack, Api]]:
    import redis

    redis.Redis.from_url(BROKER).flushdb()  # no stale runs from an earlier session
    st = Stack(pg, tmp_path)
    st.api()
    with httpx.Client(base_url=st.api_url, timeout=60) as client:
        try:
            yield st, Api(client, make_keys())
        finally:
            st.close()


def wait_for(api: Api, run_id: str, statuses: set[str], timeout: float = 300, min_events: int = 0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = api.as_("auditor").get(f"/v1/training-runs/{run_id}").json()
        if run["status"] in statuses and run["event_count"] >= min_events:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s: {run}")


def post_run(api: Api, snap: dict, base: str, hp: dict, request_id: str | None = None) -> dict:
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "expected_manifest_sha256": snap["manifest_sha256"], "base_model": base,
        "method": "lora", "hyperparameters": hp, "model_name": "tiny-faq"},
        headers={"X-Request-ID": request_id} if request_id else {})
    assert r.status_code == 201, r.text
    return r.json()


def lineage_rows(run_id: str) -> list[tuple]:
    from sqlalchemy import Uuid, bindparam, text

    from app.core.db import session_scope

    with session_scope() as s:
        return s.execute(text("SELECT revision_id, example_id, tokens, epochs FROM lineage WHERE run_id = :r")
                         .bindparams(bindparam("r", type_=Uuid())), {"r": uuid.UUID(run_id)}).all()


def test_trainer_end_to_end_then_killed_trainer_is_reaped(stack, tiny_base):
    st, api = stack
    ds, _ = approved_dataset(api, n=16)
    snap = freeze(api, ds, validation_fraction=0.25, seed="3")
    recs, _ = export_records(api, snap["id"])
    train_revs = {r["revision_id"] for r in recs if r["split"] == "train"}

    worker = st.trainer(api.keys["trainer"], "gpu-a")
    t0 = time.time()
    run = post_run(api, snap, tiny_base, SHORT, request_id="e2e-trace-run-1")
    done = wait_for(api, run["id"], {"succeeded", "failed", "cancelled"})
    took = time.time() - t0
    assert done["status"] == "succeeded", (done, (st.tmp / "gpu-a.log").read_text()[-3000:])
    assert done["model_version"]["name"] == "tiny-faq" and done["model_version"]["version"] == 1
    assert done["metrics"]["steps"] >= 1 and done["metrics"]["manifest_sha256"] == snap["manifest_sha256"]
    assert done["worker_host"] == socket.gethostname()

    # one lineage row per trained revision, each a train-split member, tokens as the trainer counted them
    rows = lineage_rows(run["id"])
    assert rows and {str(r[0]) for r in rows} <= train_revs
    assert all(r[2] > 0 and r[3] >= 1 for r in rows)

    events = api.as_("auditor").get(f"/v1/training-runs/{run['id']}/events", params={"limit": 1000}).json()["items"]
    kinds = {e["kind"] for e in events}
    assert {"log", "metrics"} <= kinds
    assert any("train_loss" in (e["data"] or {}) for e in events if e["kind"] == "metrics")

    art = api.as_("auditor").get("/v1/models/tiny-faq/versions/1/artifact")
    assert art.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(art.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(names)
    assert hashlib.sha256(art.content).hexdigest() == done["model_version"]["artifact_sha256"]
    # One request id from the create to the trainer's last report: the task carried it in its headers and
    # the trainer sent it on every call (start, export, events, complete), as the API's access log shows.
    import json

    traced = [json.loads(ln) for ln in (st.tmp / "api.log").read_text().splitlines() if ln.startswith("{")]
    traced = [ln["message"] for ln in traced
              if ln.get("request_id") == "e2e-trace-run-1" and ln["logger"] == "uvicorn.access"]
    for call in ("POST /v1/training-runs HTTP", f"POST /v1/training-runs/{run['id']}/start",
                 f"/v1/snapshots/{snap['id']}/export", f"POST /v1/training-runs/{run['id']}/events",
                 f"POST /v1/training-runs/{run['id']}/complete"):
        assert any(call in m for m in traced), (call, traced)
    print(f"\nend-to-end run (API + Redis + celery trainer, tiny model, CPU): {took:.1f}s, "
          f"{len(rows)} lineage rows, artifact {len(art.content)} bytes")

    # --- kill the trainer mid-run ---------------------------------------------------------------------
    long = post_run(api, snap, tiny_base, {**SHORT, "max_steps": 100000, "epochs": 1000})
    wait_for(api, long["id"], {"running"}, min_events=3, timeout=180)
    st.kill(worker)
    from app.core.db import session_scope
    from app.training.reaper import reap

    time.sleep(1.5)
    with session_scope() as s:
        assert reap(s, stale_after_s=1.0) == [uuid.UUID(long["id"])]
    lost = api.as_("auditor").get(f"/v1/training-runs/{long['id']}").json()
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost"
    assert lost["model_version"] is None and lineage_rows(long["id"]) == []
    assert api.as_("auditor").get("/v1/models/tiny-faq/versions").json()["items"][0]["version"] == 1
    # the dead run's late report is refused
    r = api.as_("trainer").post(f"/v1/training-runs/{long['id']}/events", json={"events": [{"kind": "heartbeat"}]})
    assert r.status_code == 409

    # a fresh trainer takes the next run
    st.trainer(api.keys["trainer"], "gpu-b")
    nxt = post_run(api, snap, tiny_base, SHORT)
    again = wait_for(api, nxt["id"], {"succeeded", "failed", "cancelled"})
    assert again["status"] == "succeeded", (again, (st.tmp / "gpu-b.log").read_text()[-3000:])
    assert again["model_version"]["version"] == 2
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True


def test_dpo_run_through_the_real_trainer_worker(stack, tiny_base):
    """method dpo end to end on real processes: a preference snapshot, the celery trainer worker, the tiny
    model on the CPU; DPO metrics events, one lineage row per pair, the adapter registered."""
    from tests.factories import set_status

    st, api = stack
    ds = api.as_("curator").post("/v1/datasets", json={"name": "prefs-e2e", "format": "preference"}).json()
    rows = [{"prompt": f"Question {i}: which answer is kind?", "chosen": f"The kind answer {i}.",
             "rejected": f"A rude answer, number {i}!", "provenance": {"source": "s", "source_ref": f"p{i}"}}
            for i in range(10)]
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples", json=rows)
    assert r.status_code == 201, r.text
    set_status([it["id"] for it in r.json()["items"]], "approved")
    snap = freeze(api, ds, validation_fraction=0.2, seed="3")
    recs, _ = export_records(api, snap["id"])
    st.trainer(api.keys["trainer"], "gpu-dpo")
    r = api.as_("curator").post("/v1/training-runs", json={
        "snapshot_id": snap["id"], "expected_manifest_sha256": snap["manifest_sha256"], "base_model": tiny_base,
        "method": "dpo", "model_name": "tiny-dpo",
        "hyperparameters": {**SHORT, "log_every": 1, "beta": 0.1}})
    assert r.status_code == 201, r.text
    done = wait_for(api, r.json()["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", (done, (st.tmp / "gpu-dpo.log").read_text()[-3000:])
    events = api.as_("auditor").get(f"/v1/training-runs/{done['id']}/events",
                                    params={"kind": "metrics", "limit": 1000}).json()["items"]
    assert any({"rewards_accuracy", "rewards_margin"} <= set(e["data"] or {}) for e in events)
    rows_ = lineage_rows(done["id"])
    assert {str(x[0]) for x in rows_} == {x["revision_id"] for x in recs if x["split"] == "train"}
    assert done["model_version"]["name"] == "tiny-dpo"
