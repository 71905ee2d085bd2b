"""The trainer worker's HTTP protocol, against a small fake of the service written here."""

import hashlib
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.factories import make_records

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train

KEY = "trainer-key-123"


class FakeService:
    """Just enough of /v1/training-runs and /v1/snapshots/.../export to drive one run."""

    def __init__(self, run: dict, export: bytes, manifest: str):
        self.run, self.export, self.manifest = run, export, manifest
        self.calls: list[tuple[str, str, dict | None]] = []
        self.events: list[dict] = []
        self.start_status = 200
        self.events_status = 200
        self.unauthorized = 0
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, body=None, headers=None):
                data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _auth(self):
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    svc.unauthorized += 1
                    self._reply(401, {"error": {"code": "unauthorized", "message": "bad key"}})
                    return False
                return True

            def do_GET(self):
                if not self._auth():
                    return
                svc.calls.append(("GET", self.path, None))
                rid = svc.run["id"]
                if self.path == f"/v1/training-runs/{rid}":
                    return self._reply(200, svc.run)
                if self.path.startswith(f"/v1/snapshots/{svc.run['snapshot_id']}/export"):
                    assert "format=pedigree" in self.path and "split=all" in self.path
                    return self._reply(
                        200,
                        svc.export,
                        {"Content-Type": "application/x-ndjson", "X-Manifest-SHA256": svc.manifest},
                    )
                self._reply(404, {"error": {"code": "not_found", "message": self.path}})

            def do_POST(self):
                if not self._auth():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                svc.calls.append(("POST", self.path, body))
                action = self.path.rsplit("/", 1)[-1]
                if action == "start":
                    return self._reply(svc.start_status, {"id": svc.run["id"], "status": "running"})
                if action == "events":
                    if svc.events_status == 200:
                        svc.events.extend(body["events"])
                    return self._reply(svc.events_status, {"accepted": len(body["events"])})
                if action in ("complete", "fail"):
                    return self._reply(200, {"id": svc.run["id"]})
                self._reply(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self, action):
        return [b for m, p, b in self.calls if m == "POST" and p.endswith("/" + action)]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def service(tiny_model):
    from trainer.data import manifest_sha256

    recs = make_records(24)
    manifest = manifest_sha256((r["content_sha256"], r["split"]) for r in recs)
    run = {
        "id": "run-1",
        "status": "queued",
        "snapshot_id": "snap-9",
        "base_model": str(tiny_model),
        "method": "lora",
        "hyperparameters": {"max_seq_len": 256, "batch_tokens": 512, "log_every": 1},
        "expected_manifest_sha256": manifest,
        "model_name": "support-bot",
        "metadata": {"model_card": {"snapshot": "snap-9", "reviewers": ["ana"]}},
    }
    svc = FakeService(run, "".join(json.dumps(r) + "\n" for r in recs).encode(), manifest)
    yield svc
    svc.close()


@pytest.fixture(autouse=True)
def _trainer_key(monkeypatch):
    """trainer.worker builds its Celery app, and so reads TrainerSettings, when first imported."""
    monkeypatch.setenv("PEDIGREE_TRAINER_KEY", KEY)


def _settings(svc, tmp_path, **over):
    from trainer.settings import TrainerSettings

    base = {
        "api_url": svc.url,
        "key": KEY,
        "redis_url": "memory://",
        "artifact_root": str(tmp_path / "artifacts"),
        "gpus": 0,
        "heartbeat_s": 0.5,
        "flush_s": 0.1,
        "cancel_grace_s": 20,
    }
    return TrainerSettings(**(base | over))


def test_successful_run_reports_artifact_metrics_and_lineage(service, tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.worker import execute

    out = execute("run-1", _settings(service, tmp_path))
    assert out["status"] == "succeeded", out
    assert service.unauthorized == 0
    assert service.posted("start") == [{"worker_host": service.posted("start")[0]["worker_host"]}]
    assert not service.posted("fail")
    (done,) = service.posted("complete")
    assert set(done) == {"artifact_uri", "artifact_sha256", "metrics", "examples"}

    path = tmp_path / "artifacts" / "support-bot" / "run-1.tar.gz"
    assert done["artifact_uri"].endswith("support-bot/run-1.tar.gz") and path.exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == done["artifact_sha256"]
    train_ids = {r["revision_id"] for r in make_records(24) if r["split"] == "train"}
    assert {e["revision_id"] for e in done["examples"]} == train_ids
    assert all(set(e) == {"revision_id", "tokens", "epochs"} and e["tokens"] > 0 for e in done["examples"])
    assert done["metrics"]["val_loss_before"] is not None

    kinds = [e["kind"] for e in service.events]
    assert "metrics" in kinds and "log" in kinds
    assert all(set(e) == {"kind", "level", "message", "step", "data"} for e in service.events)

    extracted = tmp_path / "extracted"
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        tar.extractall(extracted, filter="data")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    assert "snap-9" in (extracted / "README.md").read_text()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), extracted)


def test_start_conflict_stops_quietly(service, tmp_path):
    from trainer.worker import execute

    service.start_status = 409
    assert execute("run-1", _settings(service, tmp_path))["status"] == "skipped"
    assert not any("/export" in p for _, p, _ in service.calls)
    assert not service.posted("fail") and not service.posted("complete")


def test_bad_base_model_fails_the_run_with_its_code(service, tmp_path):
    from trainer.worker import execute

    service.run["base_model"] = str(tmp_path / "no-such-model")
    assert execute("run-1", _settings(service, tmp_path))["status"] == "failed"
    (fail,) = service.posted("fail")
    assert fail["code"] == "bad_base_model" and "no-such-model" in fail["message"]
    assert not service.posted("complete")


def test_export_header_mismatch_fails_before_training(service, tmp_path):
    from trainer.worker import execute

    service.manifest = "0" * 64
    assert execute("run-1", _settings(service, tmp_path))["status"] == "failed"
    assert service.posted("fail")[0]["code"] == "manifest_mismatch"


def test_events_conflict_cancels_training(service, tmp_path):
    from trainer.worker import execute

    service.events_status = 409  # the run was cancelled (or reaped) on the service side
    t0 = time.time()
    out = execute("run-1", _settings(service, tmp_path))
    assert out["status"] == "cancelled"
    assert not service.posted("complete") and not service.posted("fail")
    assert time.time() - t0 < 60
    assert not (tmp_path / "artifacts").exists()


def test_pump_sends_heartbeats_when_idle(service, tmp_path):
    from trainer.client import ApiClient
    from trainer.worker import EventPump

    client = ApiClient(service.url, KEY)
    pump = EventPump(
        client,
        "run-1",
        tmp_path / "none.jsonl",
        tmp_path / "stop",
        _settings(service, tmp_path, heartbeat_s=0.2),
    )
    pump.start()
    time.sleep(1.0)
    pump.stop()
    assert sum(e["kind"] == "heartbeat" for e in service.events) >= 2


def test_package_is_reproducible(tmp_path):
    from trainer.worker import package_adapter

    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "README.md").write_text("card")
    a = package_adapter(d, tmp_path / "a.tar.gz")
    time.sleep(1.1)
    (d / "README.md").touch()
    assert package_adapter(d, tmp_path / "b.tar.gz") == a
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["README.md", "adapter_config.json"]


def test_celery_task_contract():
    from trainer.worker import app, train_command

    task = app.tasks["pedigree.train.run"]
    assert task.acks_late
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_routes["pedigree.train.run"]["queue"] == "train"
    paths = [Path(x) for x in "abcde"]
    cmd = train_command(*paths, gpus=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert train_command(*paths, gpus=1)[1:3] == ["-m", "trainer"]


def test_training_child_dies_with_the_worker(tmp_path):
    """A killed worker must not leave its training child holding the GPU for the next run."""
    import os
    import subprocess
    import sys

    pidfile = tmp_path / "child.pid"
    parent = (
        "import subprocess, sys, time\n"
        "from trainer.worker import _die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=_die_with_parent)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "import os; os._exit(0)\n"  # die without cleaning up, like a SIGKILLed worker
    )
    subprocess.run([sys.executable, "-c", parent], check=True, timeout=60)
    pid = int(pidfile.read_text())
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie (already signalled, not yet reaped by init) counts as gone.
        state = (
            Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
        )
        if state in ("Z", "X"):
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the child outlived its parent")


def test_orphaned_trainer_stops_as_cancelled(tiny_model, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_records(40)))
    spec = tmp_path / "spec.json"
    hp = {"max_seq_len": 256, "batch_tokens": 256, "epochs": 200}  # long enough to outlive its parent
    spec.write_text(json.dumps({"base_model": str(tiny_model), "method": "lora", "hyperparameters": hp}))
    out = tmp_path / "out"
    cmd = (
        f"{sys.executable} -m trainer train --spec {spec} --data {data} --out {out} --quiet --exit-with-parent"
        " >/dev/null 2>&1 & sleep 2"
    )
    subprocess.run(["sh", "-c", cmd], check=True, timeout=60)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "result.json").exists():
        time.sleep(0.5)
    assert json.loads((out / "result.json").read_text())["error"]["code"] == "cancelled"


@pytest.mark.redis
@pytest.mark.worker
def test_real_celery_worker_runs_a_task_sent_by_name(service, tmp_path):
    """`celery -A trainer.worker worker -Q train` as its own process, the task sent by name over Redis,
    as the API does."""
    import os
    import subprocess
    import sys

    from celery import Celery

    redis = pytest.importorskip("redis")
    from tests.support import redis_db_url

    url = redis_db_url("train")  # no other xdist worker's "train" queue (tests/support.py, REDIS_SLOTS)
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis")
    env = {
        **os.environ,
        "PEDIGREE_API_URL": service.url,
        "PEDIGREE_TRAINER_KEY": KEY,
        "PEDIGREE_REDIS_URL": url,
        "PEDIGREE_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "PEDIGREE_TRAINER_GPUS": "0",
    }
    repo = Path(__file__).resolve().parents[2]
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "trainer.worker", "worker", "-Q", "train", "--concurrency", "1",
         "--without-gossip", "--without-mingle", "-n", f"trainer-test-{os.getpid()}@%h", "--loglevel", "WARNING"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        client = Celery(broker=url)
        client.send_task("pedigree.train.run", args=["run-1"], queue="train")
        deadline = time.time() + 240
        while time.time() < deadline and not service.posted("complete") and not service.posted("fail"):
            assert worker.poll() is None, worker.stderr.read().decode(errors="replace")[-3000:]
            time.sleep(0.5)
        assert not service.posted("fail"), service.posted("fail")
        (done,) = service.posted("complete")
        assert done["examples"] and (tmp_path / "artifacts" / "support-bot" / "run-1.tar.gz").exists()
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        redis.Redis.from_url(url).flushdb()
