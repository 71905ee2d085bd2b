"""Evaluation-set contamination guard: the Jaccard guard alone (the baseline: what the guard was) against
Jaccard + word n-gram containment (ours), side by side in one run, through the real pipeline.

    python -m bench.eval_guard [--eval 300] [--clean 2000] [--reps 5] [--backend sqlite|postgresql]

Each arm gets fresh databases on the embedded default (SQLite, pipeline tasks in-process, PII stage
off: it is not what is measured) and the same data, imported over the HTTP API; the arms differ only in
the evaluation sets' `dedup_policy.eval_containment` (0.8, or null for the baseline). Data, from the
shared corpora:

- evaluation set: alpaca-libre instruction examples of 25-120 words;
- training set, from dolly and gpteacher (other sources, so a clean example is clean):
  - clean: examples as they are;
  - pasted: an example with one evaluation item (instruction, input, output) pasted into its answer,
    the way benchmark questions leak into scraped documents;
  - near: an evaluation item re-cased and re-punctuated with one word appended (the Jaccard guard's case);
  - quote: an example quoting 10 consecutive words of an evaluation item (not contamination);
- Clough & Stevenson's plagiarised short answers: the 5 Wikipedia originals as a second evaluation
  set, the 95 answers (cut / light / heavy copies, and non) as a second training set.

Figures: the share flagged per kind and per Clough category, false positives on clean + quote, and the
pipeline's wall time on the training set (median of --reps, ours / baseline); then ours once more with
the evaluation sets imported after the training sets (the containment sweep finds the older texts). The last stdout line is
one JSON object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson

from bench.common import CORPORA, instruct_records

TARGETS = {"pasted_recall": 0.95, "near_recall": 0.95, "false_positives": 0, "clough_non_flagged": 0,
           "time_ratio_max": 1.5}
NO_PII = {"pii_policy": {"enabled": False}}


def _words(r: dict) -> int:
    return len(f"{r['instruction']} {r['input']} {r['output']}".split())


def build(n_eval: int, n_clean: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, training rows); training rows carry their kind in provenance.source_ref."""
    rng = random.Random(seed)
    recs = instruct_records()
    seen: set[str] = set()
    evals, hosts = [], []
    for r in recs:
        key = " ".join(r["instruction"].lower().split())
        if key in seen:
            continue
        seen.add(key)
        if r["_source"] == "alpaca-libre" and 25 <= _words(r) <= 120:
            evals.append(r)
        elif r["_source"] != "alpaca-libre" and _words(r) >= 25:
            hosts.append(r)
    rng.shuffle(evals)
    rng.shuffle(hosts)
    evals = evals[:n_eval]
    n_kind = n_eval
    need = n_clean + 2 * n_kind
    if len(hosts) < need:
        raise SystemExit(f"only {len(hosts)} host examples for {need}")
    clean, pasted_hosts, quote_hosts = hosts[:n_clean], hosts[n_clean:n_clean + n_kind], hosts[n_clean + n_kind:need]

    def row(kind: str, i: int, r: dict, output: str | None = None, instruction: str | None = None) -> dict:
        return {"instruction": instruction or r["instruction"], "input": r["input"],
                "output": r["output"] if output is None else output,
                "provenance": {"source": "bench", "source_ref": f"{kind}-{i}"}}

    eval_rows = [row("eval", i, r) for i, r in enumerate(evals)]
    train = [row("clean", i, r) for i, r in enumerate(clean)]
    for i, (h, e) in enumerate(zip(pasted_hosts, evals, strict=True)):
        words = h["output"].split()
        cut = len(words) // 2
        item = " ".join(x for x in (e["instruction"], e["input"], e["output"]) if x)
        train.append(row("pasted", i, h, output=" ".join([*words[:cut], item, *words[cut:]])))
    for i, e in enumerate(evals):
        # Case and punctuation are normalised away; the appended word is a real change.
        train.append(row("near", i, e, instruction=e["instruction"].upper().replace("?", " ?"),
                         output=f"{e['output']} Thanks"))
    for i, (h, e) in enumerate(zip(quote_hosts, evals, strict=True)):
        src = f"{e['instruction']} {e['output']}".split()
        at = rng.randrange(0, max(1, len(src) - 10))
        quote = " ".join(src[at:at + 10])
        train.append(row("quote", i, h, output=f"{h['output']} As one source puts it, \"{quote}\"."))
    rng.shuffle(train)
    return eval_rows, train


def clough() -> tuple[list[dict], list[dict], dict[str, str]]:
    d = CORPORA / "neardup" / "clough_stevenson_plagiarism"
    with (d / "file_information.csv").open() as f:
        info = list(csv.DictReader(f))
    cats = {}
    origs, answers = [], []
    for r in info:
        text = (d / r["File"]).read_text(encoding="utf-8", errors="replace")
        row = {"prompt": f"Task {r['Task']}", "completion": text,
               "provenance": {"source": "clough", "source_ref": r["File"]}}
        (origs if r["Category"] == "orig" else answers).append(row)
        cats[r["File"]] = r["Category"]
    return origs, answers, cats


def run_arm(containment: bool, eval_rows: list[dict], train: list[dict], c_origs: list[dict], c_answers: list[dict],
            workdir: Path, eval_last: bool = False, db_url: str | None = None) -> dict:
    """One arm on a fresh database (SQLite in `workdir`, or `db_url`): returns the flagged training refs per evaluation set and
    the wall time of the training import (the pipeline runs inside it on the embedded default); with
    `eval_last`, the evaluation sets come after the training sets and the time is that of the eval
    import, which includes the containment sweep over the training sets."""
    os.environ["PEDIGREE_DATABASE_URL"] = db_url or f"sqlite:///{workdir / 'pedigree.db'}"
    os.environ.pop("PEDIGREE_REDIS_URL", None)
    os.environ["PEDIGREE_EMBEDDED"] = "true"
    os.environ["PEDIGREE_ARTIFACT_ROOT"] = str(workdir / "artifacts")
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from app.core import auth
    from app.core.config import reset_settings
    from app.core.db import session_scope
    from app.main import create_app
    from app.models.dedup import DedupEvalHit
    from app.models.example import Example

    reset_settings()
    with TestClient(create_app()) as client:
        with session_scope() as s:
            _, key = auth.create_key(s, name="bench-curator", role="curator")
        h = {"Authorization": f"Bearer {key}"}

        def dataset(fmt: str, is_eval: bool) -> str:
            policy = {} if not is_eval else {"dedup_policy": {"eval_containment": 0.8 if containment else None}}
            r = client.post("/v1/datasets", headers=h, json={"name": f"ds-{uuid.uuid4().hex[:8]}", "format": fmt,
                                                             "is_eval_set": is_eval, **NO_PII, **policy})
            r.raise_for_status()
            return r.json()["id"]

        def load(ds: str, rows: list[dict]) -> float:
            body = b"\n".join(orjson.dumps(r) for r in rows)
            t0 = time.perf_counter()
            r = client.post(f"/v1/datasets/{ds}/examples:import", headers={**h, "Content-Type": "application/x-ndjson"},
                            content=body)
            r.raise_for_status()
            assert r.json()["accepted"] == len(rows), r.json()
            return time.perf_counter() - t0

        ev, tr = dataset("instruction", True), dataset("instruction", False)
        cev, ctr = dataset("completion", True), dataset("completion", False)
        if eval_last:
            load(tr, train)
            load(ctr, c_answers)
            seconds = load(ev, eval_rows)
            load(cev, c_origs)
        else:
            load(ev, eval_rows)
            load(cev, c_origs)
            seconds = load(tr, train)
            load(ctr, c_answers)
        flagged: dict[str, dict[str, str]] = {ev: {}, cev: {}}
        with session_scope() as s:
            for ref, eds, method in s.execute(
                select(Example.source_ref, DedupEvalHit.eval_dataset_id, DedupEvalHit.method)
                .join(Example, Example.id == DedupEvalHit.example_id)
            ):
                flagged[str(eds)][ref] = method
    return {"main": flagged[ev], "clough": flagged[cev], "seconds": seconds, "train_examples": len(train)}


def _arm(backend: str, *args, **kw) -> dict:
    if backend == "sqlite":
        return run_arm(*args, **kw)
    from bench.common import temp_pg_database

    with temp_pg_database("pedigree_bench_eval") as url:
        try:
            return run_arm(*args, db_url=url, **kw)
        finally:
            from app.core.db import get_engine

            get_engine().dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", type=int, default=300, help="evaluation items (and items of each contaminated kind)")
    ap.add_argument("--clean", type=int, default=2000, help="clean training examples")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                    help="the database (PostgreSQL: a throwaway database per arm on PEDIGREE_BENCH_PG)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of both arms, alternating (median time)")
    args = ap.parse_args()

    eval_rows, train = build(args.eval, args.clean)
    c_origs, c_answers, cats = clough()
    kinds = defaultdict(int)
    for r in train:
        kinds[r["provenance"]["source_ref"].split("-")[0]] += 1
    times: dict[str, list[float]] = {"baseline": [], "ours": []}
    last: dict[str, dict] = {}
    load0 = os.getloadavg()[0]
    for rep in range(args.reps):
        for arm in (("baseline", "ours") if rep % 2 == 0 else ("ours", "baseline")):
            with tempfile.TemporaryDirectory(prefix=f"pedigree-bench-eval-{arm}-") as tmp:
                res = _arm(args.backend, arm == "ours", eval_rows, train, c_origs, c_answers, Path(tmp))
            times[arm].append(res["seconds"])
            last[arm] = res
            print(f"rep {rep + 1} {arm:<8}: training import + pipeline {res['seconds']:.1f} s, "
                  f"{len(res['main'])} flagged", flush=True)

    # The other order: training texts first, then the evaluation items (their sweep finds the texts).
    with tempfile.TemporaryDirectory(prefix="pedigree-bench-eval-last-") as tmp:
        late = _arm(args.backend, True, eval_rows, train, c_origs, c_answers, Path(tmp), eval_last=True)
    print(f"ours, evaluation set imported last: eval import + sweep of {len(train)} training examples "
          f"{late['seconds']:.1f} s, {len(late['main'])} flagged", flush=True)

    def shares(res: dict) -> dict:
        by_kind = defaultdict(int)
        for ref in res["main"]:
            by_kind[ref.split("-")[0]] += 1
        cl = defaultdict(lambda: [0, 0])
        for f, c in cats.items():
            if c != "orig":
                cl[c][1] += 1
                cl[c][0] += f in res["clough"]
        return {
            "flagged_share": {k: round(by_kind[k] / n, 3) for k, n in sorted(kinds.items())},
            "false_positives": by_kind["clean"] + by_kind["quote"],
            "clough_flagged_share": {c: round(a / n, 3) for c, (a, n) in sorted(cl.items())},
            "methods": dict(sorted(defaultdict(int, {m: sum(1 for v in res["main"].values() if v == m)
                                                     for m in set(res["main"].values())}).items())),
        }

    base, ours, ours_late = shares(last["baseline"]), shares(last["ours"]), shares(late)
    # What a laxer eval_containment would flag on Clough & Stevenson (the coefficient computed directly).
    from app.dedup import containment
    from app.dedup.schemas import DedupPolicy

    by_task = {r["prompt"]: r["completion"] for r in c_origs}
    coef: dict[str, list[float]] = defaultdict(list)
    for r in c_answers:
        g = containment.Ngrams([by_task[r["prompt"]], r["completion"]], DedupPolicy())
        coef[cats[r["provenance"]["source_ref"]]].append(containment.overlap(g.set(0), g.set(1)) or 0.0)
    sweep = {f"{t:.1f}": {c: round(sum(x >= t for x in v) / len(v), 3) for c, v in sorted(coef.items())}
             for t in (0.3, 0.5, 0.8)}
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["baseline"]
    print(f"{'kind':<10}{'n':>6}{'baseline':>10}{'ours':>8}{'ours, eval set last':>21}")
    for k, n in sorted(kinds.items()):
        print(f"{k:<10}{n:>6}{base['flagged_share'][k]:>10.3f}{ours['flagged_share'][k]:>8.3f}"
              f"{ours_late['flagged_share'][k]:>21.3f}")
    print("Clough & Stevenson, share flagged against the Wikipedia originals:")
    for c in ("cut", "light", "heavy", "non"):
        print(f"  {c:<8}{base['clough_flagged_share'][c]:>10.3f}{ours['clough_flagged_share'][c]:>8.3f}")
    print("  eval_containment at  " + "  ".join(f"{t}: cut {v['cut']:.2f} light {v['light']:.2f} heavy {v['heavy']:.2f} "
                                                 f"non {v['non']:.2f}" for t, v in sweep.items()))
    print(f"training import + pipeline, median of {args.reps}: baseline {med['baseline']:.1f} s, ours {med['ours']:.1f} s "
          f"({ratio:.2f}x)")
    result = {
        "bench": "eval_guard", "backend": args.backend,
        "machine": f"{platform.node()} ({os.cpu_count()} cpus, {platform.machine()})",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m": {"before": round(load0, 1), "after": round(os.getloadavg()[0], 1)},
        "eval_items": len(eval_rows), "training_examples": len(train), "kinds": dict(sorted(kinds.items())),
        "baseline": base, "ours": ours, "clough_flagged_share_by_eval_containment": sweep,
        "ours_eval_set_last": {**ours_late, "eval_import_with_sweep_s": round(late["seconds"], 2)},
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "time_ratio": round(ratio, 3),
        "targets": TARGETS,
    }
    result["pass"] = bool(
        ours["flagged_share"]["pasted"] >= TARGETS["pasted_recall"]
        and ours_late["flagged_share"]["pasted"] >= TARGETS["pasted_recall"]
        and ours_late["false_positives"] <= TARGETS["false_positives"]
        and ours["flagged_share"]["near"] >= TARGETS["near_recall"]
        and ours["false_positives"] <= TARGETS["false_positives"]
        and ours["clough_flagged_share"]["non"] <= TARGETS["clough_non_flagged"]
        and ratio <= TARGETS["time_ratio_max"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
