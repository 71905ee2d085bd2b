"""The GPU host's Celery worker: `celery -A trainer.worker worker -Q train --concurrency 1`.

Two tasks: `pedigree.evaluate.run(evaluation_id)` (the same supervision for `python -m trainer
evaluate`; see `execute_evaluation`) and `pedigree.train.run(run_id)`. It claims the run over HTTP, downloads the snapshot export,
trains in a child process (torchrun when the host has several GPUs), streams events and heartbeats
back, uploads the adapter, and reports completion or failure. Training always runs in a child so
that an OOM, a CUDA fault or a cancel never leaves this long-lived worker holding GPU memory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from celery import Celery

from trainer.client import ApiClient, Conflict
from trainer.settings import TrainerSettings

EVENT_KEYS = ("kind", "level", "message", "step", "data")


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_command(spec: Path, data: Path, out: Path, events: Path, stop: Path, gpus: int) -> list[str]:
    """The child's command line (docs/trainer.md, "The child protocol"); the embedded trainer's is the
    same for one process."""
    args = [
        "-m",
        "trainer",
        "train",
        "--spec",
        str(spec),
        "--data",
        str(data),
        "--out",
        str(out),
        "--events",
        str(events),
        "--stop-file",
        str(stop),
        "--quiet",
        "--exit-with-parent",
    ]
    if gpus > 1:
        # Data parallel over every local GPU (issue 7 §5); torchrun sets RANK/WORLD_SIZE for trainer.run.
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            *args,
        ]
    return [sys.executable, *args]


def read_events(path: Path, offset: int) -> tuple[int, list[dict]]:
    """The whole event lines of the child's events file after `offset`, and the offset after them
    (docs/trainer.md, "The child protocol"; app/training/embedded.py reads them the same way)."""
    if not path.exists():
        return offset, []
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    # Only whole lines: the child may be mid-write.
    end = chunk.rfind(b"\n") + 1
    events = []
    for line in chunk[:end].splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.append({k: e.get(k) for k in EVENT_KEYS})
    return offset + end, events


class EventPump(threading.Thread):
    """Forwards the child's events file to the API in batches, with heartbeats in between.

    A 409 from the events endpoint means the run was cancelled or reaped: the pump then asks the
    child to stop (stop file) and the task reports nothing further.
    """

    def __init__(
        self,
        client: ApiClient,
        run_id: str,
        path: Path,
        stop_file: Path,
        settings: TrainerSettings,
        resource: str = "training-runs",
    ):
        super().__init__(daemon=True)
        self.resource = resource
        self.client, self.run_id, self.path, self.stop_file, self.s = (
            client,
            run_id,
            path,
            stop_file,
            settings,
        )
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._offset = 0
        self.last_sent = 0.0
        self.error: Exception | None = None

    def add(self, kind: str, message: str, level: str = "info", data: dict | None = None) -> None:
        with self._lock:
            self._pending.append(
                {"kind": kind, "level": level, "message": message, "step": None, "data": data or {}}
            )

    def _read_new(self) -> None:
        self._offset, events = read_events(self.path, self._offset)
        with self._lock:
            self._pending.extend(events)

    def flush(self, *, heartbeat: bool = False) -> None:
        self._read_new()
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch and heartbeat:
            batch = [{"kind": "heartbeat", "level": "info", "message": "alive", "step": None, "data": {}}]
        if not batch:
            return
        try:
            self.client.events(self.run_id, batch, self.resource)
            self.last_sent = time.time()
        except Conflict:
            self.cancelled.set()
            self.stop_file.touch()
        except Exception as exc:  # noqa: BLE001 - a flaky API must not kill training; retried next tick
            self.error = exc
            with self._lock:
                self._pending = batch + self._pending

    def run(self) -> None:
        self.last_sent = time.time()
        while not self._done.wait(self.s.flush_s):
            if self.cancelled.is_set():
                continue
            self.flush(heartbeat=time.time() - self.last_sent >= self.s.heartbeat_s)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)
        if not self.cancelled.is_set():
            self.flush()


def package_adapter(adapter_dir: Path, dest: Path) -> str:
    """tar.gz of the adapter folder's files at the archive root; byte-identical for identical files."""
    h = hashlib.sha256()
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(adapter_dir)))
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload(local: Path, artifact_root: str, model_name: str, run_id: str) -> str:
    import fsspec

    url = f"{artifact_root.rstrip('/')}/{model_name}/{run_id}.tar.gz"
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(local), path)
    return fs.unstrip_protocol(path)


def _spec_from_run(run: dict) -> dict:
    metadata = run.get("metadata") or {}
    return {
        "base_model": run["base_model"],
        "method": run.get("method", "lora"),
        "hyperparameters": run.get("hyperparameters") or {},
        "expected_manifest_sha256": run.get("expected_manifest_sha256"),
        "model_name": run.get("model_name"),
        "model_card": run.get("model_card") or metadata.get("model_card") or {},
        # The run's canaries with their secrets (the trainer-role view of the run); none by default.
        "canaries": run.get("canaries") or [],
    }


def _claim_and_run(what: str, row_id: str, settings: TrainerSettings, client: ApiClient | None,
                   request_id: str | None, *, startable: tuple[str, ...], resource: str, fetch, start, body) -> dict:
    """The claim both tasks make (docs/evaluation.md, "The wire protocol"; docs/trainer.md): read the row,
    skip one that is no longer startable, claim it (409: another host has it or it was cancelled, so stop
    quietly), run `body(row, client)`, and report an unexpected error as `internal_error` before re-raising."""
    own_client = client is None
    client = client or ApiClient(settings.api_url, settings.key, request_id=request_id)
    try:
        row = fetch(client, row_id)
        if row.get("status") not in (None, *startable):
            return {"status": "skipped", "reason": f"{what} is {row.get('status')}"}
        try:
            start(client, row_id, socket.gethostname())
        except Conflict:
            return {"status": "skipped", "reason": "start refused (409)"}
        try:
            return body(row, client)
        except Exception as exc:
            try:
                client.fail(row_id, "internal_error", f"trainer worker: {type(exc).__name__}: {exc}", resource)
            except Exception:  # noqa: BLE001, S110 - the original error is what matters; it is re-raised
                pass
            raise
    finally:
        if own_client:
            client.close()


def execute(run_id: str, settings: TrainerSettings, client: ApiClient | None = None,
            request_id: str | None = None) -> dict:
    """Run one training run end to end; returns what happened (for logs and tests)."""
    return _claim_and_run("run", run_id, settings, client, request_id, startable=("queued", "validating"),
                          resource="training-runs", fetch=lambda c, i: c.get_run(i), start=lambda c, i, h: c.start(i, h),
                          body=lambda run, c: _train_claimed(run_id, run, settings, c))


def _train_claimed(run_id: str, run: dict, settings: TrainerSettings, client: ApiClient) -> dict:
    spec = _spec_from_run(run)
    with tempfile.TemporaryDirectory(prefix=f"pedigree-run-{run_id}-") as tmp:
        tmp = Path(tmp)
        events, stop, out = tmp / "events.jsonl", tmp / "stop", tmp / "out"
        pump = EventPump(client, run_id, events, stop, settings)
        pump.start()
        try:
            pump.add("log", f"worker {socket.gethostname()} downloading snapshot {run['snapshot_id']}")
            data = tmp / "export.jsonl"
            try:
                header = client.download_export(run["snapshot_id"], data)
            except Conflict:
                pump.cancelled.set()
                return {"status": "cancelled"}
            expected = spec.get("expected_manifest_sha256")
            if header and expected and header != expected:
                pump.stop()
                client.fail(
                    run_id,
                    "manifest_mismatch",
                    f"snapshot export manifest {header} differs from the expected {expected}",
                )
                return {"status": "failed", "code": "manifest_mismatch"}
            (tmp / "spec.json").write_text(json.dumps(spec))
            gpus = settings.gpus if settings.gpus is not None else gpu_count()
            cmd = train_command(tmp / "spec.json", data, out, events, stop, gpus)
            pump.add("log", f"training on {max(gpus, 1)} {'GPU' if gpus else 'CPU process'}(s)")
            proc, stderr_tail = run_child(cmd, pump, settings)
        finally:
            pump.stop()
        if pump.cancelled.is_set():
            return {"status": "cancelled"}
        result_path = out / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        if not result or "error" in result:
            err = (result or {}).get("error") or {
                "code": "internal_error",
                "message": f"trainer exited with {proc.returncode}: {stderr_tail[-2000:]}",
            }
            if err["code"] == "cancelled":
                return {"status": "cancelled"}
            client.fail(run_id, err["code"], err["message"])
            return {"status": "failed", "code": err["code"]}
        tarball = tmp / f"{run_id}.tar.gz"
        sha = package_adapter(Path(result["adapter_dir"]), tarball)
        model_name = spec.get("model_name") or run_id
        uri = upload(tarball, settings.artifact_root, model_name, run_id)
        body = {
            "artifact_uri": uri,
            "artifact_sha256": sha,
            "metrics": result["metrics"],
            "examples": result["examples"],
        }
        try:
            client.complete(run_id, body)
        except Conflict:
            # The service refused a late report (reaped or cancelled meanwhile); the artifact stays
            # unreferenced rather than registering a model the service no longer expects.
            return {"status": "refused", "artifact_uri": uri}
        return {"status": "succeeded", "artifact_uri": uri, "artifact_sha256": sha}


def run_child(cmd: list[str], pump: EventPump, settings: TrainerSettings) -> tuple[subprocess.Popen, str]:
    """Run a child (train or evaluate) under the pump: dies with this worker, stopped on cancel."""
    proc = subprocess.Popen(
        cmd,
        cwd=os.getcwd(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - async-signal-safe, see _die_with_parent
    )
    return proc, _wait(proc, pump, settings)


def evaluate_command(spec: Path, out: Path, events: Path, stop: Path) -> list[str]:
    """The evaluation child's command line (docs/trainer.md, "Evaluation"); one process, like the
    embedded evaluator's."""
    return [sys.executable, "-m", "trainer", "evaluate", "--spec", str(spec), "--out", str(out),
            "--events", str(events), "--stop-file", str(stop), "--quiet", "--exit-with-parent"]


EVAL = "evaluations"


def execute_evaluation(evaluation_id: str, settings: TrainerSettings, client: ApiClient | None = None) -> dict:
    """Run one evaluation end to end over the wire protocol (docs/evaluation.md); returns what happened."""
    return _claim_and_run("evaluation", evaluation_id, settings, client, None, startable=("queued",), resource=EVAL,
                          fetch=lambda c, i: c.get_evaluation(i),
                          start=lambda c, i, h: c.start_evaluation(i, h),
                          body=lambda ev, c: _evaluate_claimed(evaluation_id, settings, c))


def _evaluate_claimed(evaluation_id: str, settings: TrainerSettings, client: ApiClient) -> dict:
    import shutil

    with tempfile.TemporaryDirectory(prefix=f"pedigree-eval-{evaluation_id}-") as tmp:
        tmp = Path(tmp)
        events, stop, out = tmp / "events.jsonl", tmp / "stop", tmp / "out"
        pump = EventPump(client, evaluation_id, events, stop, settings, resource=EVAL)
        pump.start()
        try:
            try:
                spec = client.evaluation_spec(evaluation_id)
                # Raw PII values (pii_probes) and canary secrets live only in this temp dir.
                local: dict = {"eval_sets": {}}
                for key, wire in (spec.get("files") or {}).items():
                    if key == "eval_sets":
                        for name, w in (wire or {}).items():
                            local["eval_sets"][name] = _fetch(client, evaluation_id, w, tmp)
                    else:
                        local[key] = _fetch(client, evaluation_id, wire, tmp) if wire else None
                tarball = tmp / "adapter.tar.gz"
                headers = client.download_evaluation_file(evaluation_id, "adapter", tarball)
            except Conflict:
                pump.cancelled.set()
                return {"status": "cancelled"}
            expected = headers.get("x-artifact-sha256") or (spec.get("adapter") or {}).get("sha256")
            actual = _sha256(tarball)
            if expected and actual != expected:
                pump.stop()
                client.fail(evaluation_id, "manifest_mismatch",
                            f"the adapter artifact hashes to {actual}, the version says {expected}", EVAL)
                return {"status": "failed", "code": "manifest_mismatch"}
            adapter_dir = tmp / "adapter"
            adapter_dir.mkdir()
            with tarfile.open(tarball) as tar:
                tar.extractall(adapter_dir, filter="data")
            spec = {**spec, "files": local, "adapter_dir": str(adapter_dir)}
            spec.pop("adapter", None)
            (tmp / "spec.json").write_text(json.dumps(spec))
            pump.add("log", f"worker {socket.gethostname()} evaluating: {', '.join(spec.get('suites') or [])}")
            proc, stderr_tail = run_child(evaluate_command(tmp / "spec.json", out, events, stop), pump, settings)
        finally:
            pump.stop()
        if pump.cancelled.is_set():
            return {"status": "cancelled"}
        result_path = out / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        shutil.rmtree(tmp / "files", ignore_errors=True)
        if not result or "error" in result:
            err = (result or {}).get("error") or {
                "code": "internal_error",
                "message": f"evaluator exited with {proc.returncode}: {stderr_tail[-2000:]}",
            }
            if err["code"] == "cancelled":
                return {"status": "cancelled"}
            client.fail(evaluation_id, err["code"], err["message"], EVAL)
            return {"status": "failed", "code": err["code"]}
        try:
            client.complete(evaluation_id, {"results": result["results"]}, EVAL)
        except Conflict:
            return {"status": "refused"}
        return {"status": "succeeded", "suites": sorted(result["results"])}


def _fetch(client: ApiClient, evaluation_id: str, wire: str, tmp: Path) -> str:
    dest = tmp / "files" / (wire.replace("/", "__") + ".jsonl")
    client.download_evaluation_file(evaluation_id, wire, dest)
    return str(dest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


try:
    # Resolved at import: the pre-exec hook runs in a forked child of a threaded process, where an
    # import (and its lock) could deadlock; a bare foreign call cannot.
    import ctypes
    import signal

    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    _SIGTERM = int(signal.SIGTERM)
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this worker process dies (Linux), so a killed worker
    never leaves an orphaned run holding the GPU. torchrun forwards the signal to its ranks, which
    also stop on their own once reparented (--exit-with-parent)."""
    if _PRCTL is not None:
        _PRCTL(1, _SIGTERM)  # PR_SET_PDEATHSIG


def _wait(proc: subprocess.Popen, pump: EventPump, settings: TrainerSettings) -> str:
    """Wait for the child; on cancel give it a grace period to stop at a step boundary, then kill it."""
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    cancelled_at = None
    while proc.poll() is None:
        time.sleep(0.2)
        if pump.cancelled.is_set() and cancelled_at is None:
            cancelled_at = time.time()
        if cancelled_at and time.time() - cancelled_at > settings.cancel_grace_s:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    reader.join(timeout=10)
    return b"".join(stderr_chunks).decode(errors="replace")


# The message header the service puts its request id in (app.core.logs.TASK_HEADER; the trainer imports
# nothing from app, so the name is repeated here).
REQUEST_ID_HEADER = "pedigree_request_id"


def task_request_id(request) -> str | None:
    """The service's request id from a task's message headers (Celery exposes a custom header both as an
    attribute of the request and in its `headers`, depending on the protocol path)."""
    rid = getattr(request, REQUEST_ID_HEADER, None) or (getattr(request, "headers", None) or {}).get(
        REQUEST_ID_HEADER)
    return rid if isinstance(rid, str) else None


def make_app(settings: TrainerSettings | None = None) -> Celery:
    # Read once, here: `celery -A trainer.worker` imports this module at start-up, so a missing key
    # stops the worker before it takes a task rather than failing every run it claims.
    settings = settings or TrainerSettings()
    celery = Celery("pedigree-trainer", broker=settings.redis_url)
    celery.conf.update(
        task_default_queue="train",
        task_routes={"pedigree.train.run": {"queue": "train"}, "pedigree.evaluate.run": {"queue": "train"}},
        # One run at a time per host, and a run is only acknowledged once it has finished, so a
        # host that dies mid-run does not silently drop it (the service's reaper decides its fate).
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )

    @celery.task(name="pedigree.train.run", acks_late=True, ignore_result=True, bind=True)
    def run(self, run_id: str) -> dict:
        return execute(run_id, settings, request_id=task_request_id(self.request))

    @celery.task(name="pedigree.evaluate.run", acks_late=True, ignore_result=True)
    def evaluate(evaluation_id: str) -> dict:
        # Same queue, same one-at-a-time host: an evaluation holds the GPU like a run does.
        return execute_evaluation(evaluation_id, settings)

    return celery


app = make_app()
