"""The embedded default's evaluator: with no Redis there is no GPU worker, so an evaluation runs in this
process, in a background thread, through the same service functions the wire protocol calls and the same
child command a GPU host runs (`python -m trainer evaluate`; the API never imports torch). It shares the
training runner's child supervisor and its one-at-a-time lock (app/training/embedded.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from app.core.db import session_scope
from app.core.errors import Conflict
from app.evaluations import files, service
from app.evaluations.schemas import EvalComplete
from app.training import artifacts
from app.training import embedded as training_embedded
from app.training.schemas import EventIn

log = logging.getLogger(__name__)
ACTOR = training_embedded.ACTOR
_threads: dict[str, threading.Thread] = {}


def start_in_background(evaluation_id: str) -> None:
    t = threading.Thread(target=training_embedded.serialised, args=(lambda: run(evaluation_id),),
                         name=f"pedigree-eval-{evaluation_id}", daemon=True)
    _threads[evaluation_id] = t
    t.start()


def wait(evaluation_id: str, timeout: float | None = None) -> None:
    t = _threads.get(evaluation_id)
    if t is not None:
        t.join(timeout)


def evaluate_command(spec: Path, out: Path, events: Path, stop: Path) -> list[str]:
    """The child protocol (docs/evaluation.md); trainer/worker.py runs the same command."""
    return [sys.executable, "-m", "trainer", "evaluate", "--spec", str(spec), "--out", str(out), "--events",
            str(events), "--stop-file", str(stop), "--quiet", "--exit-with-parent"]


def _events(evaluation_id: str, events: list[dict[str, Any]]) -> bool:
    try:
        with session_scope() as s:
            service.add_events(s, evaluation_id=evaluation_id, events=[EventIn(**e) for e in events])
        return True
    except Conflict:
        return False


def _fail(evaluation_id: str, code: str, message: str) -> None:
    try:
        with session_scope() as s:
            service.fail(s, evaluation_id=evaluation_id, code=code, message=message, actor=ACTOR)
    except Conflict:
        pass


def run(evaluation_id: str) -> dict[str, Any]:
    try:
        with session_scope() as s:
            ev = service.start(s, evaluation_id=evaluation_id,
                               worker_host=f"embedded:{socket.gethostname()}:{os.getpid()}", actor=ACTOR)
            mv = service.version_of(s, ev)
            artifact_uri = mv.artifact_uri
    except Conflict:
        return {"status": "skipped"}
    try:
        with tempfile.TemporaryDirectory(prefix=f"pedigree-eval-{evaluation_id}-") as tmp_s:
            return _evaluate(evaluation_id, Path(tmp_s), artifact_uri)
    except Exception as exc:
        log.exception("embedded evaluation %s failed", evaluation_id)
        _fail(evaluation_id, "internal_error", f"embedded evaluator: {type(exc).__name__}: {exc}")
        return {"status": "failed", "code": "internal_error"}


def _evaluate(evaluation_id: str, tmp: Path, artifact_uri: str) -> dict[str, Any]:
    events, stop, out = tmp / "events.jsonl", tmp / "stop", tmp / "out"
    with session_scope() as s:
        ev = service.get(s, evaluation_id)
        spec = files.spec(s, ev)
        local: dict[str, Any] = {"eval_sets": {}}
        # Raw PII values (pii_probes) exist only in this temp dir, which is removed with the run.
        for key, name in spec["files"].items():
            if key == "eval_sets":
                for ds_name, wire in name.items():
                    local["eval_sets"][ds_name] = _write(tmp, wire, files.lines(s, ev, wire))
            else:
                local[key] = _write(tmp, name, files.lines(s, ev, name)) if name else None
    adapter_dir = tmp / "adapter"
    adapter_dir.mkdir()
    tarball = tmp / "adapter.tar.gz"
    with open(tarball, "wb") as f:
        f.writelines(artifacts.iter_bytes(artifact_uri))
    with tarfile.open(tarball) as tar:
        tar.extractall(adapter_dir, filter="data")
    spec = {**spec, "files": local, "adapter_dir": str(adapter_dir)}
    spec.pop("adapter", None)
    (tmp / "spec.json").write_text(json.dumps(spec, default=str))
    _events(evaluation_id, [{"kind": "log", "message": f"embedded evaluator: suites {', '.join(spec['suites'])} "
                                                       "on the CPU"}])
    cmd = evaluate_command(tmp / "spec.json", out, events, stop)
    returncode, stderr, cancelled = training_embedded.supervise_child(
        cmd, events, stop, lambda batch: _events(evaluation_id, batch))
    if cancelled:
        return {"status": "cancelled"}
    result_path = out / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if not result or "error" in result:
        err = (result or {}).get("error") or {"code": "internal_error",
                                              "message": f"evaluator exited with {returncode}: {stderr[-2000:]}"}
        _fail(evaluation_id, err["code"], err["message"])
        return {"status": "failed", "code": err["code"]}
    try:
        with session_scope() as s:
            service.complete(s, evaluation_id=evaluation_id, data=EvalComplete(results=result["results"]),
                             actor=ACTOR)
    except Conflict:
        return {"status": "refused"}
    shutil.rmtree(tmp / "adapter", ignore_errors=True)
    return {"status": "succeeded"}


def _write(tmp: Path, wire: str, chunks: Any) -> str:
    path = tmp / "files" / (wire.replace("/", "__") + ".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.writelines(chunks)
    return str(path)
