"""Snapshot freeze and export speed, on PostgreSQL (1,000,000 approved examples) and SQLite (100,000).

    python -m bench.snapshot [--n 1000000] [--sqlite-n 100000] [--reps 3] [--skip-sqlite] [--skip-postgres]

For each database:
  1. builds the dataset directly (COPY on PostgreSQL, executemany on SQLite): n approved instruction
     examples from the shared corpora (later passes varied so every content hash differs), plus 5% more
     that the default filter must exclude (pending review, duplicates with links, erased);
  2. freezes a snapshot through the real HTTP API (uvicorn subprocess): POST /v1/snapshots, timed;
  3. streams the export in `pedigree` JSONL and in Parquet to a file, --reps times each, alternating,
     timed (examples/s; the median is the figure, every run is listed), with the server's peak RSS
     (VmHWM) after exports of ~25% of the members and after the full ones, so memory growth with size shows;
  4. times until the snapshot's Merkle root is stored (in the freeze itself, or right after it for
     PostgreSQL freezes above 250k members) and asks for one member's membership proof, timed;
  5. untimed checks: every JSONL line's content hash and the manifest recomputed with the stdlib (the
     trainer's formula) equal the X-Manifest-SHA256 header; the Merkle root recomputed from the same
     lines equals the snapshot's; the proof verifies; the Parquet file reads back with pyarrow.
The last stdout line is one JSON object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psycopg

from bench.common import (
    ROOT,
    api_server,
    bench_env,
    create_key,
    instruct_records,
    migrate,
    peak_rss_mb,
    temp_pg_database,
)

BATCH_PROOFS = 1000
TARGET_FREEZE_S = 10.0
TARGET_EXPORT_PER_S = 50_000
TARGET_RSS_GROWTH_MB = 100


def _records(n: int, seed_records: list[dict]):
    """(content, sha) for n distinct instruction examples."""
    from app.examples.formats import content_sha256

    for i in range(n):
        r = seed_records[i % len(seed_records)]
        k = i // len(seed_records)
        content = {"instruction": r["instruction"] if k == 0 else f"{r['instruction']} (variant {k})",
                   "input": r["input"], "output": r["output"]}
        yield content, content_sha256(content), r["_source"]


def _rows(n: int, dataset_id: uuid.UUID, batch_id: uuid.UUID):
    """Example and revision rows: n approved + 5% that the default filter excludes."""
    from app.core.ids import new_id

    extra = max(n // 20, 3)
    seed = instruct_records()
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    for i, (content, sha, source) in enumerate(_records(n + extra, seed)):
        eid, rid = new_id(), new_id()
        status = "approved"
        if i >= n:
            status = ("pending_review", "duplicate", "erased")[i % 3]
        collected = now - dt.timedelta(days=i % 365)
        ex = (eid, dataset_id, status, None, rid, source, f"bench-{i}", collected,
              "CC-BY-SA-3.0" if i % 4 else "CC-BY-4.0", "contract", batch_id, "bench", "{}",
              '["lang:en"]' if i % 2 else '["lang:de"]', now, now)
        rev = (rid, eid, 0, orjson.dumps(content).decode(), sha, "ingest", "bench", now)
        yield ex, rev, status


EX_COLS = ("id, dataset_id, status, stage, current_revision_id, source, source_ref, collected_at, license, "
           "legal_basis, ingest_batch_id, ingested_by, metadata, tags, created_at, updated_at")
REV_COLS = "id, example_id, seq, content, content_sha256, reason, author, created_at"


def build_pg(db_url: str, n: int, dataset_id: str) -> float:
    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    ds = uuid.UUID(dataset_id)
    batch = uuid.uuid4()
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO ingest_batches (id, dataset_id, created_by, channel, atomic, defaults, status, "
                    "accepted, rejected, unchanged, exact_duplicates, errors) VALUES "
                    "(%s, %s, 'bench', 'import', false, '{}', 'completed', %s, 0, 0, 0, '[]')", (batch, ds, n))
        cur.execute("SET CONSTRAINTS ALL DEFERRED")
        dups = []
        with cur.copy(f"COPY examples ({EX_COLS}) FROM STDIN") as ex_cp:
            revs = []
            for ex, rev, status in _rows(n, ds, batch):
                ex_cp.write_row(ex)
                revs.append(rev)
                if status == "duplicate":
                    dups.append(ex[0])
        with cur.copy(f"COPY example_revisions ({REV_COLS}) FROM STDIN") as rev_cp:
            for rev in revs:
                rev_cp.write_row(rev)
        canon = revs[0][1]
        with cur.copy("COPY duplicate_links (id, dataset_id, example_id, canonical_example_id, method, similarity, "
                      "created_by) FROM STDIN") as cp:
            for d in dups:
                cp.write_row((uuid.uuid4(), ds, d, canon, "minhash", 0.9, "bench"))
        conn.commit()
        cur.execute("ANALYZE")
    return time.perf_counter() - t0


def build_sqlite(path: Path, n: int, dataset_id: str) -> float:
    ds = uuid.UUID(dataset_id).hex
    batch = uuid.uuid4().hex
    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO ingest_batches (id, dataset_id, created_by, channel, atomic, defaults, status, "
                 "accepted, rejected, unchanged, exact_duplicates, errors, created_at) VALUES "
                 "(?, ?, 'bench', 'import', 0, '{}', 'completed', ?, 0, 0, 0, '[]', CURRENT_TIMESTAMP)",
                 (batch, ds, n))
    exs, revs, links = [], [], []

    def fmt(v):
        if isinstance(v, uuid.UUID):
            return v.hex
        if isinstance(v, dt.datetime):
            return v.replace(tzinfo=None).isoformat(sep=" ")
        return v

    for ex, rev, status in _rows(n, uuid.UUID(ds), uuid.UUID(batch)):
        exs.append(tuple(fmt(v) for v in ex))
        revs.append(tuple(fmt(v) for v in rev))
        if status == "duplicate":
            links.append((uuid.uuid4().hex, ds, ex[0].hex, revs[0][1], "minhash", 0.9, "bench", exs[0][-1]))
    conn.executemany(f"INSERT INTO examples ({EX_COLS}) VALUES ({', '.join('?' * 16)})", exs)
    conn.executemany(f"INSERT INTO example_revisions ({REV_COLS}) VALUES ({', '.join('?' * 8)})", revs)
    conn.executemany("INSERT INTO duplicate_links (id, dataset_id, example_id, canonical_example_id, method, "
                     "similarity, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", links)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def _download(url: str, key: str, snap: str, fmt: str, dest: Path) -> tuple[float, dict[str, str], int]:
    t0 = time.perf_counter()
    size = 0
    with httpx.stream("GET", f"{url}/v1/snapshots/{snap}/export", params={"format": fmt, "split": "all"},
                      headers={"Authorization": f"Bearer {key}"}, timeout=None) as r, dest.open("wb") as f:
        r.raise_for_status()
        for chunk in r.iter_raw(1 << 20):
            f.write(chunk)
            size += len(chunk)
        headers = dict(r.headers)
    return time.perf_counter() - t0, headers, size


def verify_jsonl(path: Path) -> tuple[int, str, str, str, list[str]]:
    """The trainer's check, written with the stdlib only; plus the Merkle root of the same lines, the
    first member's example id (for the proof request) and every example id (a sample of them is
    asked for in one batch of proofs)."""
    from app.snapshots import merkle  # stdlib only, no app imports

    lines = []
    first = ""
    ids = []
    with path.open("rb") as f:
        for raw in f:
            rec = json.loads(raw)
            first = first or rec["example_id"]
            ids.append(rec["example_id"])
            canon = json.dumps(rec["content"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if hashlib.sha256(canon.encode("utf-8")).hexdigest() != rec["content_sha256"]:
                raise AssertionError(f"content hash mismatch in {rec['revision_id']}")
            lines.append(f"{rec['content_sha256']} {rec['split']}")
    lines.sort()
    root = merkle.root_of(merkle.leaf_hash(x.encode()) for x in lines).hex()
    return len(lines), hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(), root, first, ids


def run_one(label: str, db_url: str, n: int, env: dict[str, str], build, reps: int = 3) -> dict:
    migrate(env)
    key = create_key(env)
    h = {"Authorization": f"Bearer {key}"}
    # The machine may be shared: the load average says how much of it this run had.
    out: dict = {"n": n, "load_avg_1m": {"start": round(os.getloadavg()[0], 2)}}
    with api_server(env) as (url, proc), tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        ds = httpx.post(f"{url}/v1/datasets", json={"name": f"bench-{label}", "format": "instruction"}, headers=h).json()
        out["build_s"] = round(build(n, ds["id"]), 1)
        print(f"[{label}] built {n:,} approved examples (+5% excluded) in {out['build_s']} s", flush=True)

        # Warm-up and memory baseline: a ~25% snapshot of the same data, exported both ways.
        small = httpx.post(f"{url}/v1/snapshots", headers=h, timeout=None, json={
            "dataset_id": ds["id"], "name": "small", "validation_fraction": 0.1,
            # about 25% of the members (92 of the 365 collection days): several export blocks, so
            # this export already reaches the steady-state memory of a streamed export
            "filter": {"collected_after": "2026-03-01T12:00:00Z"}})
        small.raise_for_status()
        for fmt in ("pedigree", "parquet"):
            _download(url, key, small.json()["id"], fmt, tmpd / f"small.{fmt}")
        rss_small = peak_rss_mb(proc.pid)

        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/snapshots", headers=h, timeout=None, json={
            "dataset_id": ds["id"], "name": "full", "validation_fraction": 0.05, "seed": 42})
        freeze_s = time.perf_counter() - t0
        r.raise_for_status()
        snap = r.json()
        assert snap["counts"]["train"] + snap["counts"]["validation"] == n, snap["counts"]
        out["load_avg_1m"]["after_freeze"] = round(os.getloadavg()[0], 2)
        print(f"[{label}] freeze: {freeze_s:.2f} s, excluded {snap['counts']['excluded']}", flush=True)
        out["freeze_s"] = round(freeze_s, 2)
        out["excluded"] = {k: v for k, v in snap["counts"]["excluded"].items() if v}
        # Large PostgreSQL freezes store the Merkle root right after their response: wait for it on the
        # listing (which never computes one), so the exports below are timed without it running.
        out["merkle_root_at_freeze"] = snap["merkle_root"] is not None
        while snap["merkle_root"] is None:
            time.sleep(0.1)
            items = httpx.get(f"{url}/v1/snapshots", params={"dataset": ds["id"], "limit": 200}, headers=h).json()
            snap["merkle_root"] = next(x["merkle_root"] for x in items["items"] if x["id"] == snap["id"])
        out["merkle_root_ready_s"] = round(time.perf_counter() - t0, 2)
        print(f"[{label}] Merkle root {'in the freeze' if out['merkle_root_at_freeze'] else 'after it'}: "
              f"ready {out['merkle_root_ready_s']} s after the freeze request", flush=True)

        # Alternating JSONL and Parquet, so a burst of load on the shared machine hits both alike.
        runs: dict[str, list[float]] = {"jsonl": [], "parquet": []}
        rss_jsonl = 0.0
        for _ in range(max(reps, 1)):
            t_jsonl, hdr, size = _download(url, key, snap["id"], "pedigree", tmpd / "full.jsonl")
            rss_jsonl = rss_jsonl or peak_rss_mb(proc.pid)
            t_pq, hdr_pq, size_pq = _download(url, key, snap["id"], "parquet", tmpd / "full.parquet")
            runs["jsonl"].append(t_jsonl)
            runs["parquet"].append(t_pq)
        rss_full = peak_rss_mb(proc.pid)
        t_jsonl, t_pq = statistics.median(runs["jsonl"]), statistics.median(runs["parquet"])
        out["export_runs_examples_per_s"] = {k: [round(n / t) for t in v] for k, v in runs.items()}
        out["load_avg_1m"]["after_exports"] = round(os.getloadavg()[0], 2)
        out["export_jsonl_examples_per_s"] = round(n / t_jsonl)
        out["export_jsonl_mb_per_s"] = round(size / t_jsonl / 1e6, 1)
        out["export_parquet_examples_per_s"] = round(n / t_pq)
        out["jsonl_mb"] = round(size / 1e6, 1)
        out["parquet_mb"] = round(size_pq / 1e6, 1)
        out["server_peak_rss_mb"] = {"after_25pct_exports": round(rss_small, 1), "after_full_jsonl": round(rss_jsonl, 1),
                                     "after_full_parquet": round(rss_full, 1),
                                     "growth": round(rss_full - rss_small, 1)}
        print(f"[{label}] export JSONL {n / t_jsonl:,.0f} ex/s ({size / 1e6:,.0f} MB in {t_jsonl:.1f} s), "
              f"Parquet {n / t_pq:,.0f} ex/s ({size_pq / 1e6:,.0f} MB in {t_pq:.1f} s); server peak RSS "
              f"{rss_small:.0f} MB after the 25% exports, {rss_full:.0f} MB after the full ones", flush=True)

        count, manifest, root, first, all_ids = verify_jsonl(tmpd / "full.jsonl")
        import pyarrow.parquet as pq

        from app.snapshots import merkle

        t0 = time.perf_counter()
        pr = httpx.get(f"{url}/v1/snapshots/{snap['id']}/proof", params={"example_id": first}, headers=h, timeout=None)
        out["proof_s"] = round(time.perf_counter() - t0, 2)
        pr.raise_for_status()
        proof = pr.json()
        out["proof_path_len"] = len(proof["audit_path"])
        # An auditor's batch: BATCH_PROOFS members spread over the snapshot, one request, one tree.
        sample = all_ids[:: max(1, len(all_ids) // BATCH_PROOFS)][:BATCH_PROOFS]
        t0 = time.perf_counter()
        br = httpx.post(f"{url}/v1/snapshots/{snap['id']}/proofs", json={"example_ids": sample}, headers=h,
                        timeout=None)
        out["batch_proofs_s"] = round(time.perf_counter() - t0, 2)
        br.raise_for_status()
        batch = br.json()
        batch_ok = (len(batch["proofs"]) == len(sample) and not batch["refused"]
                    and all(merkle.verify_proof(p)[0] and p["merkle_root"] == root for p in batch["proofs"]))
        out["batch_proofs"] = {"n": len(sample), "s": out["batch_proofs_s"], "verified": batch_ok,
                               "vs_single_requests": round(len(sample) * out["proof_s"] / max(out["batch_proofs_s"], 1e-9), 1)}
        print(f"[{label}] {len(sample):,} proofs in one request: {out['batch_proofs_s']} s (one at a time: "
              f"~{len(sample) * out['proof_s']:,.0f} s); all verified: {batch_ok}", flush=True)
        pq_rows = pq.ParquetFile(tmpd / "full.parquet").metadata.num_rows
        out["verified"] = (count == n and manifest == hdr["x-manifest-sha256"] == snap["manifest_sha256"]
                           and pq_rows == n and hdr_pq["x-manifest-sha256"] == manifest
                           and root == snap["merkle_root"] and merkle.verify_proof(proof)[0]
                           and proof["merkle_root"] == root and batch_ok)
        print(f"[{label}] proof in {out['proof_s']} s ({out['proof_path_len']} hashes); verified: {count:,} lines, "
              f"manifest {manifest[:16]}…, Merkle root {root[:16]}…, parquet rows {pq_rows:,}: {out['verified']}",
              flush=True)
    out["load_avg_1m"]["end"] = round(os.getloadavg()[0], 2)
    out["pass"] = bool(out["verified"] and freeze_s <= TARGET_FREEZE_S
                       and out["export_jsonl_examples_per_s"] >= TARGET_EXPORT_PER_S
                       and out["export_parquet_examples_per_s"] >= TARGET_EXPORT_PER_S
                       and out["server_peak_rss_mb"]["growth"] <= TARGET_RSS_GROWTH_MB)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="approved examples on PostgreSQL")
    ap.add_argument("--sqlite-n", type=int, default=100_000, help="approved examples on SQLite")
    ap.add_argument("--reps", type=int, default=3, help="full exports per format (the median is reported)")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()

    result: dict = {"bench": "snapshot"}
    if not args.skip_postgres:
        with temp_pg_database("pedigree_bench_snap") as db_url:
            env = bench_env(db_url, None)
            result["postgresql"] = run_one("postgresql", db_url, args.n, env,
                                           lambda n, ds: build_pg(db_url, n, ds), args.reps)
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").exists() else None) as tmp:
            path = Path(tmp) / "bench.db"
            url = f"sqlite:///{path}"
            env = bench_env(url, None)
            env["PEDIGREE_EMBEDDED"] = "true"
            result["sqlite"] = run_one("sqlite", url, args.sqlite_n, env, lambda n, ds: build_sqlite(path, n, ds),
                                       args.reps)
    result["targets"] = {"freeze_s_max": TARGET_FREEZE_S, "export_examples_per_s_min": TARGET_EXPORT_PER_S,
                         "server_rss_growth_mb_max": TARGET_RSS_GROWTH_MB, "hash_verified": True,
                         "merkle_root_and_proof_verified": True}
    result["machine"] = f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB"
    result["pass"] = all(v["pass"] for k, v in result.items() if isinstance(v, dict) and "pass" in v)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
