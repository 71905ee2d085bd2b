"""The worker's evaluation task over the wire protocol (docs/evaluation.md), against a fake service:
claim, spec, files, adapter download and hash check, the child, events, the result."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.factories import make_records

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train

KEY = "trainer-key-123"
CANARY = {"id": "c1", "template": "pin {secret}.", "secret": "4711", "space": {"kind": "digits", "length": 4},
          "repetitions": 2}


@pytest.fixture(scope="module")
def adapter_tarball(tiny_model, tmp_path_factory):
    from trainer.run import train

    with pytest.MonkeyPatch.context() as mp:
        # trainer.worker reads TrainerSettings (and so the key) when first imported.
        mp.setenv("PEDIGREE_TRAINER_KEY", KEY)
        from trainer.worker import package_adapter

    root = tmp_path_factory.mktemp("wev")
    recs = make_records(16)
    spec = {"base_model": str(tiny_model), "canaries": [CANARY],
            "hyperparameters": {"max_seq_len": 128, "batch_tokens": 512, "max_steps": 2}}
    result = train(spec, recs, root / "run")
    sha = package_adapter(__import__("pathlib").Path(result["adapter_dir"]), root / "a.tar.gz")
    return (root / "a.tar.gz").read_bytes(), sha, recs


class FakeEvalService:
    def __init__(self, tiny_model, tarball: bytes, sha: str, recs):
        self.status = {"start": 200, "events": 200}
        self.sha = sha
        self.calls, self.events = [], []
        lines = {s: "".join(json.dumps(r) + "\n" for r in recs if r["split"] == s).encode()
                 for s in ("train", "validation")}
        self.files = {"train": lines["train"], "validation": lines["validation"], "adapter": tarball}
        self.spec = {"evaluation_id": "ev-1", "suites": ["membership", "memorization"],
                     "base_model": str(tiny_model), "params": {"memorization": {"candidates": 50}},
                     "adapter": {"name": "m", "version": 1, "sha256": sha},
                     "files": {"train": "train", "validation": "validation", "eval_sets": {}, "reference": None,
                               "pii_probes": None},
                     "canaries": [CANARY]}
        svc = self

        class H(BaseHTTPRequestHandler):
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

            def do_GET(self):
                assert self.headers.get("Authorization") == f"Bearer {KEY}"
                svc.calls.append(("GET", self.path))
                if self.path == "/v1/evaluations/ev-1":
                    return self._reply(200, {"id": "ev-1", "status": "queued"})
                if self.path == "/v1/evaluations/ev-1/spec":
                    return self._reply(200, svc.spec)
                name = self.path.removeprefix("/v1/evaluations/ev-1/files/")
                if name in svc.files:
                    return self._reply(200, svc.files[name], {"X-Artifact-SHA256": svc.sha} if name == "adapter" else {})
                self._reply(404, {"error": {"code": "not_found", "message": self.path}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                action = self.path.rsplit("/", 1)[-1]
                svc.calls.append(("POST", self.path, body))
                if action == "events" and svc.status["events"] == 200:
                    svc.events.extend(body["events"])
                self._reply(svc.status.get(action, 200), {"id": "ev-1"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self, action):
        return [c[2] for c in self.calls if c[0] == "POST" and c[1].endswith("/" + action)]


@pytest.fixture
def svc(tiny_model, adapter_tarball, monkeypatch):
    monkeypatch.setenv("PEDIGREE_TRAINER_KEY", KEY)
    s = FakeEvalService(tiny_model, *adapter_tarball)
    yield s
    s.server.shutdown()


def _settings(svc, tmp_path):
    from trainer.settings import TrainerSettings

    return TrainerSettings(api_url=svc.url, key=KEY, redis_url="memory://", artifact_root=str(tmp_path), gpus=0,
                           heartbeat_s=0.5, flush_s=0.1, cancel_grace_s=20)


def test_evaluation_end_to_end(svc, tmp_path):
    from trainer.worker import app, execute_evaluation

    out = execute_evaluation("ev-1", _settings(svc, tmp_path))
    assert out == {"status": "succeeded", "suites": ["membership", "memorization"]}, svc.posted("fail")
    assert svc.posted("start") == [{"worker_host": __import__("socket").gethostname()}]
    (done,) = svc.posted("complete")
    res = done["results"]
    assert 0.0 <= res["membership"]["auc"] <= 1.0
    assert set(res["memorization"]["exposure_by_repetitions"]) == {"2"}
    assert CANARY["secret"] not in json.dumps(done)
    assert any(e["kind"] == "metrics" for e in svc.events)
    assert app.conf.task_routes["pedigree.evaluate.run"]["queue"] == "train"
    assert app.tasks["pedigree.evaluate.run"].acks_late


def test_start_conflict_skips(svc, tmp_path):
    from trainer.worker import execute_evaluation

    svc.status["start"] = 409
    assert execute_evaluation("ev-1", _settings(svc, tmp_path))["status"] == "skipped"
    assert not svc.posted("fail") and not svc.posted("complete")


def test_adapter_hash_mismatch_fails(svc, tmp_path):
    from trainer.worker import execute_evaluation

    svc.sha = hashlib.sha256(b"other").hexdigest()
    out = execute_evaluation("ev-1", _settings(svc, tmp_path))
    assert out == {"status": "failed", "code": "manifest_mismatch"}
    assert svc.posted("fail")[0]["code"] == "manifest_mismatch"


def test_suite_error_is_reported_with_its_code(svc, tmp_path):
    from trainer.worker import execute_evaluation

    svc.spec["params"] = {"memorization": {"candidatez": 5}}
    out = execute_evaluation("ev-1", _settings(svc, tmp_path))
    assert out == {"status": "failed", "code": "invalid_params"}
    assert "candidatez" in svc.posted("fail")[0]["message"]
