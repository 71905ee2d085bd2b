"""Ingestion throughput: ours through the real HTTP API vs a naive ORM loop vs PostgreSQL COPY.

    python -m bench.ingest [--n 100000] [--naive-n 3000]

(a) ours: the JSONL streamed to POST /v1/datasets/{id}/examples:import on a real uvicorn server,
    into PostgreSQL, pipeline tasks enqueued to Redis (no worker: we time ingestion only);
(b) naive baseline: the same validation, then one ORM Example + revision per row, a commit each
    (run on --naive-n rows; its rate is per example, so the ratio is size-independent);
Each side runs --repeats times (default 3) and the medians are compared: this machine is noisy.
(c) floor: COPY of the same prepared rows into the same two tables.
The API's peak RSS after a small and after the full import shows memory does not grow with size.
(d) concurrency: --importers (20) clients import at once into one dataset, each --concurrent-n
    (4000) lines in its own order, every ref shared with the next importer's body (half of each
    body overlaps). Aggregate lines/s and failed requests, against the same bodies imported one
    after another by a single client into a fresh dataset in the same run (the same work: the same
    share of new and already-stored refs). Checked: every ref stored once, accepted + unchanged ==
    lines sent. `--only-concurrent` runs this part alone.
(e) observability: the same import (--obs-n lines, a fresh dataset each time) on two API servers over
    the same database, one with metrics (multiprocess mode, scraped every 5 s) and JSON logs with the
    access log, one with metrics off and the servers' text logs with the access log; the two alternate
    --repeats times and the medians are compared (on/off >= 0.95). `--only-observability` runs it alone.
The last stdout line is one JSON object with figures, targets and "pass".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psycopg

from bench.common import (
    REDIS,
    Scraper,
    api_server,
    bench_env,
    create_key,
    instruct_records,
    jsonl_examples,
    median,
    migrate,
    observability_env,
    peak_rss_mb,
    temp_pg_database,
)


def stream_import(url: str, key: str, dataset_id: str, lines) -> tuple[dict, float]:
    def body():
        buf = []
        for ln in lines:
            buf.append(ln)
            if len(buf) == 500:
                yield b"\n".join(buf) + b"\n"
                buf = []
        if buf:
            yield b"\n".join(buf) + b"\n"

    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/datasets/{dataset_id}/examples:import", content=body(), timeout=None,
                   headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"})
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return r.json(), dt


def overlapping_bodies(records: list[dict], importers: int, per_importer: int, seed: int = 7) -> list[bytes]:
    """Importer i sends refs [i*h, i*h + per_importer) with h = per_importer/2, shuffled: its second
    half is the next importer's first half. The contents of a ref are the same in every body."""
    half = per_importer // 2
    distinct = half * (importers + 1)
    lines = list(jsonl_examples(distinct, records))
    out = []
    for i in range(importers):
        refs = list(range(i * half, i * half + per_importer))
        random.Random(seed + i).shuffle(refs)
        out.append(b"\n".join(lines[r].replace(b'"bench-', b'"conc-') for r in refs) + b"\n")
    return out


def _post_body(url: str, key: str, dataset_id: str, body: bytes) -> tuple[int, dict | None]:
    def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    try:
        r = httpx.post(f"{url}/v1/datasets/{dataset_id}/examples:import", content=chunks(), timeout=600,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"})
    except httpx.HTTPError as e:
        return -1, {"exception": type(e).__name__}
    return r.status_code, (r.json() if r.status_code == 200 else {"body": r.text[:300]})


def concurrent_part(url: str, key: str, db_url: str, bodies: list[bytes], tag: str) -> dict:
    """The bodies imported at once (one thread each) and, into a fresh dataset, one after another."""
    h = {"Authorization": f"Bearer {key}"}
    lines_sent = sum(b.count(b"\n") for b in bodies)
    distinct = len({ln.split(b'"source_ref":"', 1)[1].split(b'"', 1)[0] for b in bodies for ln in b.splitlines()})
    out: dict = {"importers": len(bodies), "lines_sent": lines_sent, "distinct_refs": distinct}
    # Warm-up (imports, connection pool, statement caches) so the first side timed is not the slower for it.
    warm = httpx.post(f"{url}/v1/datasets", json={"name": f"bench-{tag}-warm", "format": "instruction"},
                      headers=h).json()
    _post_body(url, key, warm["id"], bodies[0])
    for mode in ("single", "concurrent"):
        ds = httpx.post(f"{url}/v1/datasets", json={"name": f"bench-{tag}-{mode}", "format": "instruction"},
                        headers=h).json()
        results: list[tuple[int, dict | None]] = [(0, None)] * len(bodies)
        t0 = time.perf_counter()
        if mode == "single":
            for i, b in enumerate(bodies):
                results[i] = _post_body(url, key, ds["id"], b)
        else:
            def run(i: int, b: bytes, res: list, dataset_id: str) -> None:
                res[i] = _post_body(url, key, dataset_id, b)

            threads = [threading.Thread(target=run, args=(i, b, results, ds["id"])) for i, b in enumerate(bodies)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wall = time.perf_counter() - t0
        ok = [r for code, r in results if code == 200 and r is not None]
        failures = [{"status": code, **(r or {})} for code, r in results if code != 200]
        dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            stored, stored_distinct = conn.execute(
                "SELECT count(*), count(DISTINCT source_ref) FROM examples WHERE dataset_id = %s",
                (ds["id"],)).fetchone()
        out[mode] = {
            "wall_s": round(wall, 2), "lines_per_s": round(lines_sent / wall),
            "failed_requests": len(bodies) - len(ok), "failures": failures[:5],
            "accepted": sum(r["accepted"] for r in ok), "unchanged": sum(r["unchanged"] for r in ok),
            "rejected": sum(r["rejected"] for r in ok), "stored": stored,
            "each_ref_once": stored == stored_distinct == distinct,
            "all_lines_counted": sum(r["accepted"] + r["unchanged"] for r in ok) == lines_sent,
        }
    out["concurrent_vs_single"] = round(out["concurrent"]["lines_per_s"] / out["single"]["lines_per_s"], 2)
    return out


OBS_TARGET = 0.95


def observability_part(env: dict, key: str, lines: list[bytes], repeats: int, folder: Path) -> dict:
    """Import rate with metrics and structured logs on vs off, alternating, medians (see the docstring)."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    scrapes = failed = 0
    for k in range(repeats):
        for side in ("off", "on"):
            on = side == "on"
            with api_server(observability_env(env, on, folder), log_path=folder / f"api-{side}.log") as (url, _p):
                h = {"Authorization": f"Bearer {key}"}
                d = httpx.post(f"{url}/v1/datasets", json={"name": f"obs-{side}-{k}", "format": "instruction"},
                               headers=h).json()
                body = [ln.replace(b'"bench-', f'"obs-{side}{k}-'.encode()) for ln in lines]
                with Scraper(url, key) if on else contextlib.nullcontext() as sc:
                    res, t = stream_import(url, key, d["id"], body)
                assert res["accepted"] == len(lines), res
                rates[side].append(len(lines) / t)
                if on:
                    scrapes, failed = scrapes + sc.scrapes, failed + sc.failed
    off, on = median(rates["off"]), median(rates["on"])
    return {"n": len(lines), "repeats": repeats, "runs_examples_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
            "off_examples_per_s": round(off), "on_examples_per_s": round(on), "on_vs_off": round(on / off, 3),
            "scrapes": scrapes, "failed_scrapes": failed, "target_on_vs_off_min": OBS_TARGET}


def _obs_pass(obs: dict) -> bool:
    return bool(obs["on_vs_off"] >= OBS_TARGET and obs["failed_scrapes"] == 0 and obs["scrapes"] > 0)


def naive(env: dict, dataset_id: str, lines: list[bytes]) -> float:
    """One ORM object per example, a commit each: what a first implementation usually does."""
    import os

    os.environ.update(env)
    from app.core.auth import Actor
    from app.core.config import reset_settings

    reset_settings()
    from app.core.db import session_factory
    from app.examples import parsing
    from app.models.example import Example, ExampleRevision

    actor = Actor(key_id=uuid.uuid4(), name="naive", role="curator")
    factory = session_factory()
    t0 = time.perf_counter()
    with factory() as s:
        for n, raw in enumerate(lines, 1):
            c = parsing.parse_line(raw, n, "instruction", parsing.Defaults())[0]
            ex = Example(dataset_id=uuid.UUID(dataset_id), status="ingested", stage="quality", source=c.source,
                         source_ref=f"naive-{c.source_ref}", license=c.license, collected_at=c.collected_at,
                         ingested_by=actor.ref, meta=c.metadata, tags=c.tags)
            s.add(ex)
            s.flush()
            rev = ExampleRevision(example_id=ex.id, seq=0, content=c.content, content_sha256=c.sha,
                                  reason="ingest", author=actor.ref)
            s.add(rev)
            s.flush()
            ex.current_revision_id = rev.id
            s.commit()
    return len(lines) / (time.perf_counter() - t0)


def copy_floor(db_url: str, dataset_id: str, lines: list[bytes], tag: str = "copy") -> float:
    """COPY the same rows (already validated and hashed, untimed) into examples + example_revisions."""
    from app.core.ids import new_id
    from app.examples import parsing

    ex_rows, rev_rows = [], []
    for n, raw in enumerate(lines, 1):
        c = parsing.parse_line(raw, n, "instruction", parsing.Defaults())[0]
        eid, rid = new_id(), new_id()
        ex_rows.append((eid, dataset_id, "ingested", "quality", rid, c.source, f"{tag}-{c.source_ref}", c.collected_at,
                        c.license, "copy", orjson.dumps(c.metadata).decode(), orjson.dumps(c.tags).decode()))
        rev_rows.append((rid, eid, 0, orjson.dumps(c.content).decode(), c.sha, "ingest", "copy"))
    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("SET CONSTRAINTS ALL DEFERRED")
            with cur.copy("COPY examples (id, dataset_id, status, stage, current_revision_id, source, source_ref, "
                          "collected_at, license, ingested_by, metadata, tags) FROM STDIN") as cp:
                for row in ex_rows:
                    cp.write_row(row)
            with cur.copy("COPY example_revisions (id, example_id, seq, content, content_sha256, reason, author) "
                          "FROM STDIN") as cp:
                for row in rev_rows:
                    cp.write_row(row)
        conn.commit()
        return len(lines) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="examples imported through the API")
    ap.add_argument("--naive-n", type=int, default=3000, help="examples for the naive baseline")
    ap.add_argument("--small-n", type=int, default=10_000, help="size of the import used for the memory baseline")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side; medians are reported")
    ap.add_argument("--importers", type=int, default=20, help="concurrent importers of overlapping refs")
    ap.add_argument("--concurrent-n", type=int, default=4000, help="lines each concurrent importer sends")
    ap.add_argument("--only-concurrent", action="store_true", help="run the concurrency part alone")
    ap.add_argument("--obs-n", type=int, default=30_000, help="lines per import in the observability comparison")
    ap.add_argument("--only-observability", action="store_true",
                    help="run the metrics-and-logs on/off comparison alone")
    args = ap.parse_args()

    import redis

    records = instruct_records()
    bodies = overlapping_bodies(records, args.importers, args.concurrent_n)
    if args.only_concurrent:
        with temp_pg_database() as db_url:
            env = bench_env(db_url, REDIS)
            migrate(env)
            key = create_key(env)
            redis.Redis.from_url(REDIS).flushdb()
            with api_server(env) as (url, _proc):
                conc = concurrent_part(url, key, db_url, bodies, "c")
            redis.Redis.from_url(REDIS).flushdb()
        result = {"bench": "ingest", "concurrent": conc, "concurrent_vs_single": conc["concurrent_vs_single"],
                  "concurrent_failed_requests": conc["concurrent"]["failed_requests"],
                  "targets": {"concurrent_vs_single_min": 0.8, "concurrent_failed_requests_max": 0}}
        result["pass"] = _concurrent_pass(conc)
        _print_concurrent(conc)
        print(json.dumps(result))
        return
    if args.only_observability:
        with temp_pg_database() as db_url, tempfile.TemporaryDirectory() as tmp:
            env = bench_env(db_url, REDIS)
            migrate(env)
            key = create_key(env)
            redis.Redis.from_url(REDIS).flushdb()
            obs = observability_part(env, key, list(jsonl_examples(args.obs_n, records)), args.repeats, Path(tmp))
            redis.Redis.from_url(REDIS).flushdb()
        result = {"bench": "ingest", "observability": obs, "observability_on_vs_off": obs["on_vs_off"],
                  "targets": {"observability_on_vs_off_min": OBS_TARGET}}
        result["pass"] = _obs_pass(obs)
        _print_obs(obs)
        print(json.dumps(result))
        return
    full = list(jsonl_examples(args.n, records))
    small = [ln.replace(b'"bench-', b'"small-') for ln in full[: args.small_n]]
    with temp_pg_database() as db_url:
        env = bench_env(db_url, REDIS)
        migrate(env)
        key = create_key(env)
        redis.Redis.from_url(REDIS).flushdb()
        with api_server(env) as (url, proc):
            h = {"Authorization": f"Bearer {key}"}
            ds_small = httpx.post(f"{url}/v1/datasets", json={"name": "bench-small", "format": "instruction"}, headers=h).json()
            ds = httpx.post(f"{url}/v1/datasets", json={"name": "bench", "format": "instruction"}, headers=h).json()
            _res_small, t_small = stream_import(url, key, ds_small["id"], small)
            rss_small = peak_rss_mb(proc.pid)
            ours_runs = []
            for k in range(args.repeats):
                # A fresh dataset per run, same lines: each run imports 100% new examples.
                d = ds if k == 0 else httpx.post(f"{url}/v1/datasets", json={"name": f"bench-{k}", "format": "instruction"},
                                                 headers=h).json()
                res, t_full = stream_import(url, key, d["id"], full)
                assert res["accepted"] == args.n and res["rejected"] == 0, res
                ours_runs.append(args.n / t_full)
            rss_full = peak_rss_mb(proc.pid)
            conc = concurrent_part(url, key, db_url, bodies, "c")
        ours = median(ours_runs)
        naive_runs = [naive(env, ds["id"], [ln.replace(b'"bench-', f'"naive{k}-'.encode()) for ln in full[: args.naive_n]])
                      for k in range(args.repeats)]
        naive_rate = median(naive_runs)
        copy_runs = [copy_floor(db_url, ds["id"], full, tag=f"copy{k}") for k in range(args.repeats)]
        copy_rate = median(copy_runs)
        redis.Redis.from_url(REDIS).flushdb()
        with tempfile.TemporaryDirectory() as tmp:
            obs = observability_part(env, key, full[: args.obs_n], args.repeats, Path(tmp))
        redis.Redis.from_url(REDIS).flushdb()

    result = {
        "bench": "ingest",
        "n": args.n,
        "repeats": args.repeats,
        "runs_examples_per_s": {"ours": [round(x) for x in ours_runs], "naive": [round(x) for x in naive_runs],
                                "copy": [round(x) for x in copy_runs]},
        "ours_examples_per_s": round(ours),
        "naive_examples_per_s": round(naive_rate),
        "copy_examples_per_s": round(copy_rate),
        "ours_vs_naive": round(ours / naive_rate, 1),
        "copy_vs_ours": round(copy_rate / ours, 2),
        "api_peak_rss_mb": {"after_small": round(rss_small, 1), "after_full": round(rss_full, 1),
                            "small_n": args.small_n, "growth": round(rss_full / rss_small, 3)},
        "small_import_examples_per_s": round(args.small_n / t_small),
        "concurrent": conc,
        "concurrent_vs_single": conc["concurrent_vs_single"],
        "concurrent_failed_requests": conc["concurrent"]["failed_requests"],
        "observability": obs,
        "observability_on_vs_off": obs["on_vs_off"],
        "targets": {"ours_examples_per_s": 10_000, "ours_vs_naive": 20, "copy_vs_ours_max": 3,
                    "rss_growth_max": 1.25, "concurrent_vs_single_min": 0.8, "concurrent_failed_requests_max": 0,
                    "observability_on_vs_off_min": OBS_TARGET},
    }
    result["pass"] = bool(
        ours >= 10_000 and ours / naive_rate >= 20 and copy_rate / ours <= 3 and rss_full / rss_small <= 1.25
        and _concurrent_pass(conc) and _obs_pass(obs)
    )
    print(f"ours   {ours:10,.0f} examples/s  (HTTP import, PostgreSQL)")
    print(f"naive  {naive_rate:10,.0f} examples/s  (ORM object + commit per example)")
    print(f"COPY   {copy_rate:10,.0f} examples/s  (floor)")
    print(f"API peak RSS: {rss_small:.0f} MB after {args.small_n:,}, {rss_full:.0f} MB after {args.n:,}")
    _print_concurrent(conc)
    _print_obs(obs)
    print(json.dumps(result))


def _print_obs(obs: dict) -> None:
    print(f"metrics+JSON logs on {obs['on_examples_per_s']:8,} examples/s, off {obs['off_examples_per_s']:8,}: "
          f"{obs['on_vs_off']}x ({obs['scrapes']} scrapes, {obs['failed_scrapes']} failed)")


def _concurrent_pass(conc: dict) -> bool:
    c = conc["concurrent"]
    return bool(conc["concurrent_vs_single"] >= 0.8 and c["failed_requests"] == 0 and c["each_ref_once"]
                and c["all_lines_counted"] and conc["single"]["failed_requests"] == 0)


def _print_concurrent(conc: dict) -> None:
    s, c = conc["single"], conc["concurrent"]
    print(f"single     {s['lines_per_s']:10,} lines/s  ({conc['importers']} bodies one after another)")
    print(f"concurrent {c['lines_per_s']:10,} lines/s  ({conc['importers']} at once: {c['failed_requests']} failed, "
          f"each ref once: {c['each_ref_once']}, {conc['concurrent_vs_single']}x single)")


if __name__ == "__main__":
    main()
