"""The embedded default's trainer: with no Redis there is no GPU worker to send the task to, so a run
executes in this process, in a background thread, through the same service functions the HTTP
protocol calls (start, events, complete, fail) and the same command line a GPU host runs
(`python -m trainer train`, as a child process: the API never imports torch, and a crash of the
training code cannot take the API down with it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.auth import Actor
from app.core.db import session_scope
from app.core.errors import Conflict
from app.snapshots import export as snapshot_export
from app.snapshots import repository as snapshots
from app.training import artifacts, canaries, service
from app.training.schemas import EventIn, RunComplete

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The in-process runner acts with the trainer role, under a name that says where it ran.
ACTOR = Actor(key_id=uuid.UUID(int=1), name="embedded-trainer", role="trainer", is_human=False)
FLUSH_S = 1.0
# As the GPU worker's PEDIGREE_TRAINER_CANCEL_GRACE_S: time for a cancelled child to stop at a step
# boundary before it is terminated (then killed), so a child stuck in one step cannot hold the run.
CANCEL_GRACE_S = 60.0

_threads: dict[str, threading.Thread] = {}
# One run at a time, as a GPU host's worker runs with --concurrency 1: the others stay queued.
_one_at_a_time = threading.Lock()


def start_in_background(run_id: str) -> None:
    """Called after the creating transaction commits. Returns at once: the request is not held for the
    length of a training run."""
    t = threading.Thread(target=_serialised, args=(run_id,), name=f"pedigree-train-{run_id}", daemon=True)
    _threads[run_id] = t
    t.start()


def wait(run_id: str, timeout: float | None = None) -> None:
    t = _threads.get(run_id)
    if t is not None:
        t.join(timeout)


def _events(run_id: str, events: list[dict[str, Any]]) -> bool:
    """Forward a batch; False once the run no longer accepts events (cancelled or reaped)."""
    try:
        with session_scope() as s:
            service.add_events(s, run_id=run_id, events=[EventIn(**e) for e in events])
        return True
    except Conflict:
        return False


def _serialised(run_id: str) -> None:
    serialised(lambda: run(run_id))


def _reap_orphans() -> None:
    """There is no beat scheduler in the embedded mode: a run left `running` by a process that exited
    would stay so forever. Its heartbeats stopped with that process, so the reaper's rule applies
    (to evaluations too: the reaper covers both)."""
    from app.training.reaper import reap

    try:
        with session_scope() as s:
            reap(s)
    except Exception:
        log.exception("reaping orphaned embedded runs failed")
    # No beat here either for the erasure re-test's hold (app/lineage/retest.py): expired strings go now.
    from app.lineage import retest

    try:
        with session_scope() as s:
            retest.expire(s)
    except Exception:
        log.exception("dropping expired erasure re-test strings failed")


def run(run_id: str) -> dict[str, Any]:
    try:
        with session_scope() as s:
            r = service.start(s, run_id=run_id, worker_host=f"embedded:{socket.gethostname()}:{os.getpid()}",
                              actor=ACTOR)
            spec = {"base_model": r.base_model, "method": r.method, "hyperparameters": r.hyperparameters,
                    "expected_manifest_sha256": r.expected_manifest_sha256, "model_name": r.model_name,
                    "model_card": service.model_card_facts(s, r, governance=True),
                    "canaries": canaries.with_secrets(s, r.id)}
            snap = snapshots.get(s, r.snapshot_id)
            plan = snapshot_export.plan_export(s, snap, split="all")
    except Conflict:
        return {"status": "skipped"}
    try:
        return _train(run_id, spec, plan)
    except Exception as exc:
        log.exception("embedded training run %s failed", run_id)
        try:
            with session_scope() as s:
                service.fail(s, run_id=run_id, code="internal_error",
                             message=f"embedded trainer: {type(exc).__name__}: {exc}", actor=ACTOR)
        except Conflict:
            pass
        return {"status": "failed", "code": "internal_error"}


def _train(run_id: str, spec: dict[str, Any], plan: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"pedigree-run-{run_id}-") as tmp_s:
        tmp = Path(tmp_s)
        data, events, stop, out = tmp / "export.jsonl", tmp / "events.jsonl", tmp / "stop", tmp / "out"
        with open(data, "wb") as f:
            for block in snapshot_export.iter_pedigree_blocks(plan):
                f.write(block)
                if not block.endswith(b"\n"):
                    f.write(b"\n")
        (tmp / "spec.json").write_text(json.dumps(spec, default=str))
        cmd = train_command(tmp / "spec.json", data, out, events, stop)
        _events(run_id, [{"kind": "log", "message": f"embedded trainer: {plan.count} records, training on the CPU"}])
        returncode, stderr, cancelled = supervise_child(cmd, events, stop, lambda batch: _events(run_id, batch))
        if cancelled:
            return {"status": "cancelled"}
        result_path = out / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        if not result or "error" in result:
            err = (result or {}).get("error") or {
                "code": "internal_error",
                "message": f"trainer exited with {returncode}: {stderr[-2000:]}"}
            with session_scope() as s:
                service.fail(s, run_id=run_id, code=err["code"], message=err["message"], actor=ACTOR)
            return {"status": "failed", "code": err["code"]}
        tarball = tmp / f"{run_id}.tar.gz"
        sha = artifacts.package(Path(result["adapter_dir"]), tarball)
        uri = artifacts.upload(tarball, spec["model_name"], run_id)
        body = RunComplete(artifact_uri=uri, artifact_sha256=sha, metrics=result["metrics"],
                           examples=result["examples"])
        try:
            with session_scope() as s:
                _, mv = service.complete(s, run_id=run_id, data=body, actor=ACTOR)
                name, version = mv.name, mv.version
        except Conflict:
            return {"status": "refused", "artifact_uri": uri}
        return {"status": "succeeded", "model_version": {"name": name, "version": version}}


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def supervise_child(cmd: list[str], events: Path, stop: Path,
                    forward: Callable[[list[dict[str, Any]]], bool]) -> tuple[int | None, str, bool]:
    """Run a trainer child (`train` or `evaluate`: the same protocol) to its end: its events go to
    `forward` every FLUSH_S (an empty batch as a heartbeat); once `forward` answers False (cancelled or
    reaped) the child is asked to stop, then terminated after CANCEL_GRACE_S. Returns the exit code, the
    stderr text and whether it was cancelled."""
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    offset, cancelled_at = 0, None
    while True:
        done = proc.poll() is not None
        offset, batch = read_events(events, offset)
        # An empty batch is still a heartbeat, so the reaper leaves a slow first step alone.
        if cancelled_at is None and not forward(batch or [{"kind": "heartbeat"}]):
            cancelled_at = time.monotonic()
            stop.touch()  # the child stops at the next step boundary
        if done:
            break
        if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
            _stop_child(proc)
            break
        time.sleep(FLUSH_S)
    reader.join(timeout=10)
    return proc.returncode, b"".join(stderr).decode(errors="replace"), cancelled_at is not None


def serialised(fn: Callable[[], Any]) -> Any:
    """One child at a time in this process (training or evaluation), as a GPU host's worker runs with
    --concurrency 1; orphans of an exited process are reaped first."""
    with _one_at_a_time:
        _reap_orphans()
        return fn()


def _stop_child(proc: subprocess.Popen) -> None:
    log.warning("trainer child %s ignored the stop file for %.0f s: terminating it", proc.pid, CANCEL_GRACE_S)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# The child protocol (docs/trainer.md) is the GPU worker's: these two mirror trainer.worker's
# train_command and read_events, and a test holds them to it (the API may not import the trainer).
EVENT_KEYS = ("kind", "level", "message", "step", "data")


def train_command(spec: Path, data: Path, out: Path, events: Path, stop: Path) -> list[str]:
    # --exit-with-parent: the child stops once this API process is gone, instead of training on for
    # nobody (the run is then reaped as worker_lost).
    return [sys.executable, "-m", "trainer", "train", "--spec", str(spec), "--data", str(data), "--out", str(out),
            "--events", str(events), "--stop-file", str(stop), "--quiet", "--exit-with-parent"]


def read_events(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    """The whole event lines after `offset`, and the offset after them."""
    if not path.exists():
        return offset, []
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # whole lines only: the child may be mid-write
    out = []
    for line in chunk[:end].splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append({k: e.get(k) for k in EVENT_KEYS})
    return offset + end, out
