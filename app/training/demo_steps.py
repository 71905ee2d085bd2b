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


def _hh_line(i: int) -> bytes:
    import orjson

    q = f"How do I reset the password on account {i}?"
    good = f"Open Settings, choose Security, then 'Reset password' for account {i}; a link arrives by email."
    bad = "Just make a new account."
    return orjson.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}",
                         "provenance": {"source": "support-prefs", "source_ref": f"pref-{i}", "license": "internal"}})


def step_dpo(ctx: Any) -> None:
    """Preference data end to end, short: HH-shaped pairs imported, compared blind by two reviewers (one pair
    swapped by their majority, one tie left out of the snapshot), then a DPO run on the tiny model."""
    ds = ctx.call("POST", "/v1/datasets", "curator", json={"name": "support-prefs", "format": "preference",
                                                           "review_policy": {"required_approvals": 2}})
    body = b"\n".join(_hh_line(i) for i in range(12)) + b"\n"
    imp = ctx.call("POST", f"/v1/datasets/{ds['id']}/examples:import", "curator", content=body,
                   headers={"Content-Type": "application/x-ndjson"})
    console.print(f"imported {imp['accepted']} Anthropic-HH-shaped pairs (prompt split off the transcripts)")
    swap_ref = tie_ref = None
    for role in ("reviewer", "reviewer2"):
        while items := ctx.call("GET", f"/v1/review/queue?dataset={ds['id']}&limit=20", role)["items"]:
            for n, it in enumerate(sorted(items, key=lambda x: x["example_id"])):
                content, pw = it["revision"]["content"], it["pairwise"]
                chosen_side = "a" if pw["a"] == content["chosen"] else "b"
                pick, reason = chosen_side, "more_helpful"
                if n == 0:  # both reviewers prefer the stored rejected answer here: the majority swaps the pair
                    pick, reason, swap_ref = ("b" if chosen_side == "a" else "a"), "more_accurate", it["example_id"]
                elif n == 1:
                    pick, reason, tie_ref = "tie", "equally_good", it["example_id"]
                ctx.call("POST", f"/v1/examples/{it['example_id']}/comparisons", role,
                         json={"revision_id": it["revision_id"], "pick": pick, "reason_code": reason})
    pw_stats = ctx.call("GET", f"/v1/review/stats?dataset={ds['id']}", "auditor")["pairwise"]
    bias = ", ".join(f"{r['reviewer'].split('#')[0]} {r['left_share']:.2f}" for r in pw_stats["reviewers"])
    console.print(f"pairwise review: {pw_stats['judgments']} picks, verdicts {pw_stats['verdicts']}, agreement "
                  f"{pw_stats['agreement']['percent_agreement']:.0%}; left share per reviewer (position bias): {bias}")
    swapped = ctx.call("GET", f"/v1/examples/{swap_ref}", "auditor")["revision"]
    console.print(f"example …{swap_ref[-8:]}: revision {swapped['seq']} ({swapped['reason']}) holds the swapped pair")
    snap = ctx.call("POST", "/v1/snapshots", "curator", json={"dataset_id": ds["id"], "name": "support-prefs-v1",
                                                               "validation_fraction": 0.2, "seed": 7})
    excluded = {k: v for k, v in snap["counts"]["excluded"].items() if v}
    console.print(f"snapshot {snap['name']}: {snap['member_count']} pairs, excluded {excluded} (the tie …{tie_ref[-8:]})")
    base = get_settings().model_root_list[0].resolve() / "tiny-model"
    make_tiny(base)
    run = ctx.call("POST", "/v1/training-runs", "curator", json={
        "snapshot_id": snap["id"], "expected_manifest_sha256": snap["manifest_sha256"], "base_model": str(base),
        "method": "dpo", "model_name": "support-faq-dpo",
        "hyperparameters": {"epochs": 3, "learning_rate": 5e-3, "batch_tokens": 2048, "max_seq_len": 256,
                            "lora_r": 8, "lora_alpha": 16, "seed": 7, "log_every": 1, "beta": 0.1}})
    deadline = time.time() + 600
    while run["status"] in ("validating", "queued", "running") and time.time() < deadline:
        time.sleep(1)
        run = ctx.call("GET", f"/v1/training-runs/{run['id']}", "auditor")
    if run["status"] != "succeeded":
        raise RuntimeError(f"DPO run ended {run['status']}: {run['error']}")
    m = run["metrics"]
    val = m.get("val") or {}
    before, after = (val.get("before") or {}).get("dpo_loss"), (val.get("after") or {}).get("dpo_loss")
    console.print(f"DPO run (sigmoid, beta 0.1, reference = base with the adapter off): {m['steps']} steps over "
                  f"{m['train_examples']} pairs; last window reward accuracy {m.get('rewards_accuracy', 0):.2f}, "
                  f"margin {m.get('rewards_margin', 0):.3f}"
                  + (f"; validation DPO loss {before:.4f} -> {after:.4f}" if before is not None and after is not None
                     else ""))
    mv = run["model_version"]
    console.print(f"registered {mv['name']} v{mv['version']}; each trained pair's lineage row counts both answers")
