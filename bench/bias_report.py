"""Snapshot bias report speed on PostgreSQL: a 1,000,000-member snapshot in under 60 s (issue 19).

    python -m bench.bias_report [--n 1000000] [--naive-n 20000]

1. builds n approved instruction examples directly (COPY, bench.snapshot's builder: the shared corpora's
   instruction texts, varied so every content hash differs, plus 5% excluded rows) and freezes a snapshot
   through the real HTTP API;
2. times `GET /v1/snapshots/{id}/bias-report` over HTTP (ours: keyset COPY blocks, Arrow tokenising with
   lookups per distinct token, numpy counting; no Python per member);
3. the baseline, side by side: the same counts the obvious way (one SQL row per member, a Python regex
   tokenizer and dict lookups per token) on the first --naive-n members, timed and extrapolated per
   member; and a correctness check: our counts for a snapshot of exactly those members equal the
   baseline's, group by group and role by role.
Data: the corpora texts are only measured on, nothing is tuned on them. The last stdout line is one JSON
object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import httpx
import psycopg

from bench.common import api_server, bench_env, create_key, migrate, temp_pg_database
from bench.snapshot import build_pg

TARGET_S = 60.0


def naive_counts(dsn: str, snapshot_id: str, fmt_fields: tuple[tuple[str, ...], tuple[str, ...]]) -> tuple[Counter, int, float]:
    """{(dimension, group, role): mentions} the obvious way, and (members, seconds)."""
    from app.snapshots import lexicons

    lex = lexicons.load()
    term_group = {t: lex.groups[g] for t, g in zip(lex.terms, lex.term_group.tolist()) if g >= 0}
    names = {n: lex.groups[g] for n, g in zip(lex.names, lex.name_group.tolist())}
    firsts = set(lex.bigram_firsts)
    from app.snapshots.bias import PUNCTUATION
    counts: Counter = Counter()
    t0 = time.perf_counter()
    n = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.content FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id "
                    "WHERE m.snapshot_id = %s ORDER BY m.example_id", (snapshot_id,))
        for (content,) in cur:
            n += 1
            for role, keys in zip(("prompt", "answer"), fmt_fields):
                text = "\n".join(content.get(k) or "" for k in keys)
                toks = [t.strip(PUNCTUATION) for t in text.replace("'s", "").replace("\u2019s", "").split()]
                low = [t.lower() for t in toks]
                skip = set()
                for i in range(len(low) - 1):
                    if low[i] in firsts and f"{low[i]} {low[i + 1]}" in term_group:
                        d, g = term_group[f"{low[i]} {low[i + 1]}"]
                        counts[(d, g, role)] += 1
                        skip.update((i, i + 1))
                for i, t in enumerate(low):
                    if i in skip:
                        continue
                    if t in term_group:
                        d, g = term_group[t]
                        counts[(d, g, role)] += 1
                    elif t in names and toks[i].istitle():
                        d, g = names[t]
                        counts[(d, g, role)] += 1
    return counts, n, time.perf_counter() - t0


def ours_counts(report: dict) -> Counter:
    out: Counter = Counter()
    for dim, d in report["dimensions"].items():
        for g, v in d["groups"].items():
            for role, c in v["by_role"].items():
                if c:
                    out[(dim, g, role)] = c
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="approved examples (snapshot members)")
    ap.add_argument("--naive-n", type=int, default=20_000, help="members the naive baseline counts")
    args = ap.parse_args()
    out: dict = {"bench": "bias_report", "n": args.n, "load_avg_1m": {"start": round(os.getloadavg()[0], 2)}}
    with temp_pg_database("pedigree_bias") as db_url:
        env = bench_env(db_url)
        migrate(env)
        key = create_key(env)
        h = {"Authorization": f"Bearer {key}"}
        dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
        with api_server(env) as (url, _proc):
            ds = httpx.post(f"{url}/v1/datasets", json={"name": "bench-bias", "format": "instruction"}, headers=h).json()
            out["build_s"] = round(build_pg(db_url, args.n, ds["id"]), 1)
            print(f"built {args.n:,} approved examples in {out['build_s']} s", flush=True)
            snap = httpx.post(f"{url}/v1/snapshots", headers=h, timeout=None, json={
                "dataset_id": ds["id"], "name": "full", "validation_fraction": 0.05}).json()
            out["members"] = snap["member_count"]
            out["load_avg_1m"]["before_report"] = round(os.getloadavg()[0], 2)
            t0 = time.perf_counter()
            r = httpx.get(f"{url}/v1/snapshots/{snap['id']}/bias-report", headers=h, timeout=None)
            out["report_s"] = round(time.perf_counter() - t0, 2)
            r.raise_for_status()
            rep = r.json()
            out["load_avg_1m"]["after_report"] = round(os.getloadavg()[0], 2)
            out["members_per_s"] = round(rep["members_examined"] / out["report_s"])
            out["mentions"] = {d: v["mentions"] for d, v in rep["dimensions"].items()}
            out["flags"] = len(rep["flags"])
            print(f"ours: {rep['members_examined']:,} members in {out['report_s']} s "
                  f"({out['members_per_s']:,}/s); mentions {out['mentions']}", flush=True)

            # The baseline on a prefix-sized snapshot (the members lowest by example id), and the check.
            with psycopg.connect(dsn) as conn:
                cutoff = conn.execute("SELECT example_id FROM snapshot_members WHERE snapshot_id = %s ORDER BY "
                                      "example_id OFFSET %s LIMIT 1", (snap["id"], args.naive_n - 1)).fetchone()[0]
            small = httpx.post(f"{url}/v1/snapshots", headers=h, timeout=None, json={
                "dataset_id": ds["id"], "name": "small", "validation_fraction": 0.05}).json()
            with psycopg.connect(dsn) as conn:
                # Trim the small snapshot to exactly the first naive-n members (a bench-only shortcut).
                conn.execute("DELETE FROM snapshot_members WHERE snapshot_id = %s AND example_id > %s",
                             (small["id"], cutoff))
            t0 = time.perf_counter()
            small_rep = httpx.get(f"{url}/v1/snapshots/{small['id']}/bias-report", headers=h, timeout=None).json()
            ours_small_s = time.perf_counter() - t0
            naive, n_naive, naive_s = naive_counts(dsn, small["id"], (("instruction", "input"), ("output",)))
            same = ours_counts(small_rep) == +naive
            out["naive"] = {"members": n_naive, "s": round(naive_s, 2), "members_per_s": round(n_naive / naive_s),
                            "extrapolated_s_for_n": round(naive_s * args.n / n_naive, 1)}
            out["ours_same_members_s"] = round(ours_small_s, 2)
            out["counts_equal_to_baseline"] = same
            out["speedup_vs_naive"] = round((naive_s / n_naive) / (out["report_s"] / rep["members_examined"]), 1)
            print(f"naive: {n_naive:,} members in {naive_s:.1f} s ({out['naive']['members_per_s']:,}/s), "
                  f"counts equal to ours: {same}", flush=True)
    out["targets"] = {"report_s_max": TARGET_S, "counts_equal_to_baseline": True}
    out["machine"] = f"{os.cpu_count()} cores"
    out["pass"] = out["report_s"] < TARGET_S and out["counts_equal_to_baseline"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
