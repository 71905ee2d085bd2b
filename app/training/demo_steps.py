"""The demo's `train` and `lineage report` steps (app/embedded_demo.py calls these): a tiny
random-weight model made with `python -m trainer make-tiny`, one LoRA run through the API executed
in-process (embedded mode: no Redis, no trainer worker), promotion to `production`, and a short
lineage summary."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from app.core.config import get_settings

console = Console(stderr=True)
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_tiny(path: Path) -> None:
    if (path / "config.json").exists():
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "trainer", "make-tiny", str(path)], cwd=REPO_ROOT, env=env, check=False,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m trainer make-tiny failed (is the [train] extra installed?): "
                           f"{proc.stderr[-1500:]}")


def step_train(ctx: Any) -> None:
    # Inside the first model root: the API refuses a local base model anywhere else.
    base = get_settings().model_root_list[0].resolve() / "tiny-model"
    t0 = time.time()
    make_tiny(base)
    console.print(f"tiny base model (random weights, byte-level tokenizer) at {base} in {time.time() - t0:.1f}s")
    snap = ctx.state["snapshot"]
    run = ctx.call("POST", "/v1/training-runs", "curator", json={
        "snapshot_id": snap["id"], "expected_manifest_sha256": snap["manifest_sha256"], "base_model": str(base),
        "method": "lora", "model_name": "support-faq-lora",
        "hyperparameters": {"epochs": 2, "learning_rate": 1e-3, "batch_tokens": 2048, "max_seq_len": 256,
                            "lora_r": 8, "lora_alpha": 16, "seed": 7, "log_every": 1},
        "metadata": {"purpose": "demo"},
        # Planted for the evaluate step's memorization suite (docs/evaluation.md).
        "canaries": {"count": 4, "repetitions": [1, 4, 16, 64]}})
    console.print(f"training run {run['id']}: {run['status']} (embedded: trains in-process, no trainer worker)")
    deadline = time.time() + 600
    while run["status"] in ("validating", "queued", "running") and time.time() < deadline:
        time.sleep(1)
        run = ctx.call("GET", f"/v1/training-runs/{run['id']}", "auditor")
    if run["status"] != "succeeded":
        raise RuntimeError(f"training run ended {run['status']}: {run['error']}")
    m = run["metrics"]
    events = ctx.call("GET", f"/v1/training-runs/{run['id']}/events?kind=metrics&limit=1000", "auditor")["items"]
    console.print(f"{len(events)} metrics events; {m['steps']} steps over {m['train_examples']} examples, "
                  f"{m['tokens']} tokens at {m['tokens_per_s']:.0f} tokens/s on {m['device']}")
    before, after = m.get("val_loss_before"), m.get("val_loss_after")
    if before is not None and after is not None:
        console.print(f"validation loss {before:.4f} -> {after:.4f}; train loss {m['train_loss']:.4f}")
    mv = run["model_version"]
    console.print(f"registered model {mv['name']} v{mv['version']} ({mv['status']}), "
                  f"artifact sha256 {mv['artifact_sha256'][:16]}...")
    # Staging only: production is gated on an evaluation (the evaluate step).
    ctx.call("POST", f"/v1/models/{mv['name']}/aliases/staging", "curator",
             json={"version": mv["version"], "reason": "demo: first adapter"})
    hist = ctx.call("GET", f"/v1/models/{mv['name']}/aliases/staging/history", "auditor")["items"]
    h = hist[0]
    was = f"v{h['from_version']}" if h["from_version"] else "unset"
    console.print(f"alias staging: {was} -> v{h['to_version']} by {h['actor']} ({h['reason']})")
    art = ctx.call("GET", f"/v1/models/{mv['name']}/versions/{mv['version']}/artifact", "auditor")
    out = Path(get_settings().artifact_root).resolve().parent / f"{mv['name']}-v{mv['version']}.tar.gz"
    out.write_bytes(art.content)
    console.print(f"adapter downloaded to {out} ({len(art.content)} bytes)")
    ctx.state["run"], ctx.state["model_version"] = run, mv


def step_lineage_report(ctx: Any) -> None:
    import uuid

    from sqlalchemy import Uuid, bindparam, text

    from app.core.db import session_scope

    mv = ctx.state["model_version"]
    run = ctx.state["run"]
    sql = text(
        "SELECT e.source, e.license, count(*), sum(l.tokens), max(l.epochs) FROM lineage l "
        "JOIN examples e ON e.id = l.example_id WHERE l.run_id = :run GROUP BY e.source, e.license "
        "ORDER BY e.source, e.license").bindparams(bindparam("run", type_=Uuid()))
    with session_scope() as s:
        rows = s.execute(sql, {"run": uuid.UUID(run["id"])}).all()
    total = sum(r[2] for r in rows)
    tokens = sum(r[3] or 0 for r in rows)
    console.print(f"{mv['name']} v{mv['version']} trained on {total} example revisions ({tokens} tokens) "
                  f"of snapshot {ctx.state['snapshot']['name']}:")
    for source, lic, n, tok, epochs in rows:
        console.print(f"  {source:<10} {lic or 'unknown':<10} {n:>3} examples  {tok:>6} tokens  up to {epochs} epochs")
    # The lineage API (its own issue) answers the reverse question when it is present.
    page = ctx.client.get(f"/v1/lineage/models/{mv['name']}/versions/{mv['version']}/examples?limit=1",
                          headers=ctx.h("auditor"))
    if page.status_code == 200 and page.json().get("items"):
        ex = page.json()["items"][0]
        ex_id = ex.get("example_id") or ex.get("id")
        back = ctx.client.get(f"/v1/lineage/examples/{ex_id}", headers=ctx.h("auditor"))
        if back.status_code == 200:
            versions = [f"{v.get('name')} v{v.get('version')}" for v in back.json().get("model_versions", [])]
            console.print(f"example {ex_id} -> model versions {', '.join(versions) or '-'}")
