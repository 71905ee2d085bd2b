"""Revalidation after a recognizer change: ours against a naive full re-ingest, side by side.

    python -m bench.revalidate [--examples 100000] [--token-every 100] [--approve-every 2] [--model NAME]

Setup (not timed): a throwaway PostgreSQL database built by the migrations; `--examples` instruction
examples from the shared corpora (bench.common.jsonl_examples: Alpaca-libre, Dolly, GPTeacher), one in
`--token-every` carrying an organisation's service token (`ACME-` + 12 characters), imported over HTTP
(in-process app, tasks run in-process as in the embedded mode) and taken through the whole pipeline
(quality, PII scrub with the configured spaCy model, dedup); one example in `--approve-every` approved.

The change: a deploy adds a recognizer for those tokens (PEDIGREE_PII_EXTRA_RECOGNIZERS), the way an
organisation adds its own identifiers. Then, on the same data:

* ours: the revalidation check compares every example's validation record with the new versions and
  runs the revalidation: per batch, the recognizer prefilter runs the added recognizer alone on the raw
  text (no spaCy), stamps what it cannot touch in one statement, re-scrubs the rest from the vault with the
  whole engine, writes a revision only where the output changed, and the changed examples go through dedup
  again and back to review. Timed until the last changed example has left the pipeline.
* naive: what a team without revalidation does: re-ingest the same raw examples into a new dataset and run
  the whole pipeline (quality, scrub, dedup) on every one of them; every approval is lost.

Checked: the current content of every example equals the naive path's for the same source ref (the
prefilter is exact for an added recognizer), and no approval of unchanged content was invalidated.
Targets: ours >= 5x faster than naive; 0 approvals of unchanged content invalidated; outputs equal.
The last line of stdout is one JSON object: figures, targets, "pass".

Run time: the untimed setup costs about as much as the naive path, since both scrub every example with
the model (py-spy over the 100k setup: 85% of it in the scrub's spaCy and Presidio analysis, about 10% in
quality, dedup and SQL), so a run takes about twice the naive figure: 100k examples about an hour on
the shared 2-core machine (setup 51 examples/s, naive 70/s). The setup is the real pipeline on purpose: bulk-writing
its rows would save at most that 10% and would have to re-derive what the stages write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import bench_env, jsonl_examples, temp_pg_database

TARGET_SPEEDUP = 5.0
TOKEN_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
RECOGNIZERS = [{"name": "acme_token", "entity_type": "SECRET",
                "patterns": [{"regex": r"\bACME-[A-Z0-9]{12}\b", "score": 0.9}]}]


def token(i: int) -> str:
    out, k = [], i * 7919 + 13
    for _ in range(12):
        out.append(TOKEN_CHARS[k % len(TOKEN_CHARS)])
        k //= len(TOKEN_CHARS)
        k += i + 3
    return "ACME-" + "".join(out)


def lines(n: int, every: int) -> bytes:
    out = []
    for i, raw in enumerate(jsonl_examples(n)):
        rec = orjson.loads(raw)
        if i % every == 0:
            rec["output"] = f"{rec['output']}\nService token for this request: {token(i)}."
        out.append(orjson.dumps(rec))
    return b"\n".join(out) + b"\n"


def _settings(env: dict[str, str]) -> None:
    from app.core.config import reset_settings

    os.environ.update(env)
    reset_settings()


def _import(client, key: str, ds_id: str, body: bytes) -> float:
    t0 = time.perf_counter()
    r = client.post(f"/v1/datasets/{ds_id}/examples:import", content=body,
                    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"})
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text[:500]
    return time.perf_counter() - t0


def _q(sql: str, **kw):
    from sqlalchemy import text

    from app.core.db import get_engine

    with get_engine().connect() as c:
        return c.execute(text(sql), kw).all()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.revalidate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=100_000)
    ap.add_argument("--token-every", type=int, default=100, help="one example in N carries a token")
    ap.add_argument("--approve-every", type=int, default=2, help="one example in N is approved before the change")
    ap.add_argument("--model", default=None, help="spaCy model of the engine (default: the configured one)")
    ap.add_argument("--batch", type=int, default=1000, help="examples per revalidation transaction")
    args = ap.parse_args(argv)

    with temp_pg_database("pedigree_bench_reval") as url, tempfile.TemporaryDirectory() as tmp:
        env = bench_env(url, redis_url=None)
        env["PEDIGREE_REVALIDATION_BATCH_SIZE"] = str(args.batch)
        env["PEDIGREE_METRICS"] = "false"
        env["PEDIGREE_LOG_LEVEL"] = "WARNING"
        if args.model:
            env["PEDIGREE_PII_SPACY_MODEL"] = args.model
        os.environ.pop("PEDIGREE_PII_EXTRA_RECOGNIZERS", None)
        _settings(env)
        from app.core.migrate import upgrade_head

        upgrade_head()
        from fastapi.testclient import TestClient

        from app.core import auth
        from app.core.db import session_scope
        from app.main import create_app
        from app.revalidation import jobs

        with session_scope() as s:
            _, key = auth.create_key(s, name="bench-admin", role="admin")
        body = lines(args.examples, args.token_every)
        n_tokens = len(range(0, args.examples, args.token_every))
        with TestClient(create_app()) as client:
            ds = client.post("/v1/datasets", json={"name": "reval-ours", "format": "instruction"},
                             headers={"Authorization": f"Bearer {key}"}).json()
            setup_s = _import(client, key, ds["id"], body)
        print(f"setup: {args.examples} examples through the pipeline in {setup_s:.1f} s", file=sys.stderr, flush=True)
        from app.core.db import get_engine

        with get_engine().begin() as c:
            from sqlalchemy import text

            c.execute(text("UPDATE examples SET status = 'approved' WHERE status = 'pending_review' AND "
                           "CAST(substring(source_ref from 7) AS integer) % :k = 0"), {"k": args.approve_every})
        approved_before = {r[0]: r[1] for r in _q(
            "SELECT e.source_ref, r.content_sha256 FROM examples e JOIN example_revisions r "
            "ON r.id = e.current_revision_id WHERE e.status = 'approved'")}
        revs_before = _q("SELECT count(*) FROM example_revisions")[0][0]

        # The deploy: the new recognizer.
        rec_file = Path(tmp) / "recognizers.json"
        rec_file.write_text(json.dumps(RECOGNIZERS))
        _settings({"PEDIGREE_PII_EXTRA_RECOGNIZERS": str(rec_file)})
        # A worker builds its engine once, at start (workers/tasks/pii.py): not part of either path's time.
        from app.pii import fingerprint
        from app.pii import service as pii

        fingerprint.versions(pii.engine())

        t0 = time.perf_counter()
        [rv_id] = jobs.check(ds["id"])  # the revalidation and the changed examples' dedup run in-process
        ours_s = time.perf_counter() - t0
        rv = jobs.run(rv_id)  # already done: its view
        left = _q("SELECT count(*) FROM examples WHERE stage IS NOT NULL")[0][0]
        print(f"ours: {ours_s:.1f} s {rv['changed']} changed {rv['unchanged']} unchanged", file=sys.stderr, flush=True)

        with TestClient(create_app()) as client:
            naive_ds = client.post("/v1/datasets", json={"name": "reval-naive", "format": "instruction"},
                                   headers={"Authorization": f"Bearer {key}"}).json()
            naive_s = _import(client, key, naive_ds["id"], body)
        print(f"naive: {naive_s:.1f} s", file=sys.stderr, flush=True)

        def current(ds_id: str) -> dict[str, tuple[str, str]]:
            return {r[0]: (r[1], r[2]) for r in _q(
                "SELECT e.source_ref, r.content_sha256, e.status FROM examples e JOIN example_revisions r "
                "ON r.id = e.current_revision_id WHERE e.dataset_id = :d", d=ds_id)}

        ours, naive = current(ds["id"]), current(naive_ds["id"])
        same = sum(1 for ref, (sha, _) in ours.items() if naive.get(ref, ("",))[0] == sha)
        unchanged_approved = [ref for ref, sha in approved_before.items() if ours[ref][0] == sha]
        invalidated = sum(1 for ref in unchanged_approved if ours[ref][1] != "approved")
        changed_approved = len(approved_before) - len(unchanged_approved)
        new_revisions = _q("SELECT count(*) FROM example_revisions WHERE example_id IN "
                           "(SELECT id FROM examples WHERE dataset_id = :d)", d=ds["id"])[0][0]
        leaked = _q("SELECT count(*) FROM examples e JOIN example_revisions r ON r.id = e.current_revision_id "
                    "WHERE e.dataset_id = :d AND r.content::text LIKE '%ACME-%'", d=ds["id"])[0][0]

    speedup = naive_s / ours_s if ours_s else float("inf")
    out = {
        "bench": "revalidate", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "examples": args.examples, "tokened": n_tokens, "approved_before": len(approved_before),
        "model": rv["target"]["spacy_model"], "setup_s": round(setup_s, 1),
        "ours_s": round(ours_s, 2), "naive_s": round(naive_s, 2), "speedup": round(speedup, 2),
        "ours_examples_per_s": round(args.examples / ours_s, 1), "naive_examples_per_s": round(args.examples / naive_s, 1),
        "changed": rv["changed"], "unchanged": rv["unchanged"], "skipped": rv["skipped"],
        "prefiltered": rv["plan"].get("prefiltered", 0), "rescrubbed": rv["plan"].get("rescrubbed", 0),
        "new_revisions": new_revisions - revs_before, "approvals_reset": rv["approvals_reset"],
        "approved_changed": changed_approved, "approvals_of_unchanged_invalidated": invalidated,
        "naive_approvals_lost": len(approved_before), "outputs_equal_to_naive": same, "left_in_pipeline": left,
        "tokens_left_in_content": leaked,
        "targets": {"speedup": TARGET_SPEEDUP, "approvals_of_unchanged_invalidated": 0,
                    "outputs_equal_to_naive": args.examples},
    }
    out["pass"] = bool(speedup >= TARGET_SPEEDUP and invalidated == 0 and same == args.examples and leaked == 0
                       and rv["changed"] == n_tokens and left == 0)
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
