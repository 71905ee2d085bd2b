"""Near-duplicate precision when PII scrubbing is on: tool-use-style questions that differ only in a
named entity must stay apart, the same question asked twice must still link.

    python -m bench.dedup_pii [--templates 80] [--entities 4] [--seed 0] [--backend sqlite|postgresql]

Three arms, each on a fresh database of the embedded default (pipeline tasks in-process), the same rows
imported over the HTTP API, the dataset's default dedup policy (threshold 0.8) and the default PII policy
(public places and people scrubbed too, where the policy has `public_entities`):

- ``off``: scrubbing off (``pii_policy.enabled: false``): dedup sees the names; the reference;
- ``scrubbed_text`` (the baseline: what dedup did before the view): scrubbing on, dedup compares the
  scrubbed text, where "capital of France" and "capital of Japan" are both "capital of <LOCATION>";
- ``view`` (ours): scrubbing on, dedup compares the view where each scrubbed span is a keyed hash of its
  value (docs/dedup.md, "The comparison view").

The labelled set, built from ../shared/corpora (nothing here is tuned: the threshold is the default and
no parameter was fitted to this set, so every figure is a measurement):

- templates: (a) questions mined from the instruction sets (dolly, alpaca-libre v1/v2, self-instruct
  seeds, the OpenAssistant prompt lottery): 5-30 words, no input, and exactly one LOCATION or PERSON span
  that the default scrubber replaces; the span becomes the slot; (b) a dozen hand-written tool-use
  templates of the kinds the issue names (weather in, capital of, population of, time in, ...);
- entities: the values those mined spans held, per type (so every filler is one the scrubber scrubs
  in its own sentence);
- each template is filled with ``--entities`` different values: distinct tasks, never duplicates;
- true near duplicates: for a share of the filled questions, variants with the same entity (spacing,
  punctuation, letter case of the other words, a polite prefix or suffix), and byte-identical copies
  (ingest's exact links).

Labels: a link (example -> canonical) is right when both hold the same (template, entity). Precision: right
links / links; recall: right links / the duplicates the set holds (members of a labelled group beyond its
first). A variant that NER reads differently from its original (the entity scrubbed in one, not in the
other) costs recall with scrubbing on, not precision; ``scrubbed_share`` says how many rows had their
entity scrubbed. The last stdout line is one JSON object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson

from bench.common import CORPORA

TARGETS = {"precision_view_min": 0.98, "precision_vs_off_max_drop": 0.01}
SLOT_TYPES = ("LOCATION", "PERSON")

# Tool-use questions of the kinds the issue names, one slot each.
TOOL_TEMPLATES = [
    ("LOCATION", "What is the capital of {}?"),
    ("LOCATION", "What's the weather like in {} today?"),
    ("LOCATION", "What is the population of {}?"),
    ("LOCATION", "What time is it in {} right now?"),
    ("LOCATION", "Which currency is used in {}?"),
    ("LOCATION", "Find me a cheap hotel in {} for next weekend."),
    ("LOCATION", "How far is {} from the nearest airport?"),
    ("LOCATION", "Show me the five day forecast for {}."),
    ("PERSON", "Send an email to {} saying the meeting moved to Thursday."),
    ("PERSON", "Schedule a call with {} tomorrow at 10am."),
    ("PERSON", "What is the phone number of {} in my contacts?"),
    ("PERSON", "Remind me to wish {} a happy birthday."),
]
PREFIXES = ("Please tell me: ", "Quick question. ", "Hey, ")
SUFFIXES = (" Thanks!", " Thank you.", " Please answer briefly.")
_CAP_SPAN = re.compile(r"^[A-Z][\w.'-]*( [A-Z][\w.'-]*){0,2}$")


def _questions() -> list[str]:
    d = CORPORA / "instruct"
    out: list[str] = []
    for name in ("alpaca_libre_tasks_v1.jsonl", "alpaca_libre_tasks_v2.jsonl", "selfinstruct_seed_tasks.jsonl",
                 "dolly15k_first6400_flan-t5-xl_decode.jsonl"):
        for line in (d / name).read_bytes().splitlines():
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # alpaca-libre holds malformed lines (corpora README)
            if not (r.get("input") or "").strip():
                out.append(str(r.get("instruction") or ""))
    for line in (d / "oasst_prompt_lottery_en_250_text.jsonl").read_bytes().splitlines():
        out.append(str(orjson.loads(line)))
    seen, keep = set(), []
    for q in out:
        q = " ".join(q.split())
        if 5 <= len(q.split()) <= 30 and q not in seen:
            seen.add(q)
            keep.append(q)
    return keep


def mine(limit_questions: int = 6000) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(templates as (type, text with one {} slot), entity values per type), from the corpora, with the
    project's own scrubber deciding what a span is."""
    from app.pii.engine import get_engine
    from app.pii.schemas import PiiPolicy

    qs = _questions()[:limit_questions]
    results = get_engine().analyze_batch(qs, PiiPolicy.model_validate(scrub_policy()))
    templates: list[tuple[str, str]] = []
    values: dict[str, set[str]] = defaultdict(set)
    for q, rs in zip(qs, results, strict=True):
        if len(rs) != 1 or rs[0].entity_type not in SLOT_TYPES:
            continue
        r = rs[0]
        span = q[r.start:r.end]
        if not _CAP_SPAN.match(span) or "{" in q or "}" in q:
            continue
        templates.append((r.entity_type, q[:r.start] + "{}" + q[r.end:]))
        values[r.entity_type].add(span)
    return templates, {k: sorted(v) for k, v in values.items()}


def _variant(text: str, entity: str, rng: random.Random, kind: str) -> str:
    head, _, tail = text.partition(entity)
    if kind == "spacing":
        return "  ".join(head.split(" ")) + entity + tail.replace(" ", "  ") + "\n"
    if kind == "punctuation":
        t = tail.rstrip("?.!")
        return head.replace(",", "") + entity + t + ("!" if tail.endswith("?") else "?")
    if kind == "case":
        return head.lower() + entity + tail.lower()
    if kind == "prefix":
        return rng.choice(PREFIXES) + text[0].lower() + text[1:]
    return text + rng.choice(SUFFIXES)


VARIANTS = ("spacing", "punctuation", "case", "prefix", "suffix")


def build(templates: list[tuple[str, str]], values: dict[str, list[str]], n_templates: int, per: int,
          seed: int = 0, dup_share: float = 0.5, exact_share: float = 0.1) -> list[dict]:
    rng = random.Random(seed)
    mined = [t for t in templates if values.get(t[0])]
    rng.shuffle(mined)
    chosen = TOOL_TEMPLATES + mined[: max(0, n_templates - len(TOOL_TEMPLATES))]
    rows: list[dict] = []
    for ti, (etype, tpl) in enumerate(chosen):
        pool = [v for v in values[etype] if v.casefold() not in tpl.casefold()]
        for entity in rng.sample(pool, min(per, len(pool))):
            text = tpl.format(entity)
            label = f"t{ti}:{entity}"
            group = [("orig", text)]
            if rng.random() < dup_share:
                group.append((kind := rng.choice(VARIANTS), _variant(text, entity, rng, kind)))
            if rng.random() < exact_share:
                group.append(("exact", text))
            for kind, t in group:
                rows.append({"instruction": t, "input": "", "output": "Calling the tool.",
                             "provenance": {"source": "bench-dedup-pii", "source_ref": f"r{len(rows)}",
                                            "metadata": {"label": label, "kind": kind, "entity": entity}}})
    rng.shuffle(rows)
    return rows


def scrub_policy() -> dict:
    """The policy of the scrubbing arms: the default, with public places and people scrubbed too where the
    policy can keep them (`public_entities`): the case this benchmark is about is a name that is replaced."""
    from app.pii.schemas import PiiPolicy

    return {"public_entities": "scrub"} if "public_entities" in PiiPolicy.model_fields else {}


def run_arm(arm: str, rows: list[dict], workdir: Path, db_url: str | None = None) -> dict:
    os.environ["PEDIGREE_DATABASE_URL"] = db_url or f"sqlite:///{workdir / 'pedigree.db'}"
    os.environ.pop("PEDIGREE_REDIS_URL", None)
    os.environ["PEDIGREE_EMBEDDED"] = "true"
    os.environ["PEDIGREE_ARTIFACT_ROOT"] = str(workdir / "artifacts")
    os.environ["PEDIGREE_PII_VAULT_KEY_FILE"] = str(workdir / "vault.key")
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from app.core import auth
    from app.core.config import reset_settings
    from app.core.db import session_scope
    from app.dedup import store
    from app.main import create_app
    from app.models.example import DuplicateLink, Example
    from app.models.pii import PiiFinding
    from app.pii import queries as pii_queries

    reset_settings()
    # The baseline is the same pipeline with the view switched off: dedup reads the scrubbed text as is.
    store.install_view((lambda session, contents: {}) if arm == "scrubbed_text" else pii_queries.dedup_views)
    try:
        with TestClient(create_app()) as client:
            with session_scope() as s:
                _, key = auth.create_key(s, name="bench-curator", role="curator")
            h = {"Authorization": f"Bearer {key}"}
            body = {"name": f"ds-{uuid.uuid4().hex[:8]}", "format": "instruction"}
            if arm == "off":
                body["pii_policy"] = {"enabled": False}
            else:
                body["pii_policy"] = scrub_policy()
            r = client.post("/v1/datasets", headers=h, json=body)
            r.raise_for_status()
            ds = r.json()["id"]
            t0 = time.perf_counter()
            r = client.post(f"/v1/datasets/{ds}/examples:import", content=b"\n".join(orjson.dumps(x) for x in rows),
                            headers={**h, "Content-Type": "application/x-ndjson"})
            r.raise_for_status()
            assert r.json()["accepted"] == len(rows), r.json()
            seconds = time.perf_counter() - t0
            with session_scope() as s:
                ref_of = dict(s.execute(select(Example.id, Example.source_ref)).all())
                links = [(ref_of[e], ref_of[c], m) for e, c, m in s.execute(
                    select(DuplicateLink.example_id, DuplicateLink.canonical_example_id, DuplicateLink.method))]
                scrubbed = {ref_of[e] for e in s.scalars(select(PiiFinding.example_id).distinct())}
    finally:
        store.install_view(pii_queries.dedup_views)
    return {"links": links, "scrubbed": scrubbed, "seconds": seconds}


def score(rows: list[dict], res: dict) -> dict:
    label = {r["provenance"]["source_ref"]: r["provenance"]["metadata"]["label"] for r in rows}
    kind = {r["provenance"]["source_ref"]: r["provenance"]["metadata"]["kind"] for r in rows}
    sizes: dict[str, int] = defaultdict(int)
    for lab in label.values():
        sizes[lab] += 1
    expected = sum(n - 1 for n in sizes.values())
    right = [(e, c) for e, c, _ in res["links"] if label[e] == label[c]]
    wrong = [(e, c) for e, c, _ in res["links"] if label[e] != label[c]]
    # Recall per variant kind: a variant counts as found when it, or its original, is linked within its group.
    linked_ok = {e for e, _ in right} | {c for _, c in right}
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ref, k in kind.items():
        if k != "orig":
            by_kind[k][1] += 1
            by_kind[k][0] += ref in linked_ok
    n = len(res["links"])
    return {
        "links": n,
        "right": len(right),
        "wrong": len(wrong),
        "precision": round(len(right) / n, 4) if n else 1.0,
        "recall": round(len(right) / expected, 4) if expected else 1.0,
        "exact_links": sum(1 for *_, m in res["links"] if m == "exact"),
        "recall_by_kind": {k: round(a / b, 3) for k, (a, b) in sorted(by_kind.items())},
        "scrubbed_share": round(len(res["scrubbed"]) / len(rows), 3),
        "seconds": round(res["seconds"], 2),
        "wrong_examples": [[_text(rows, e), _text(rows, c)] for e, c in wrong[:3]],
    }


def _text(rows: list[dict], ref: str) -> str:
    return next(r["instruction"] for r in rows if r["provenance"]["source_ref"] == ref)


def _arm(backend: str, arm: str, rows: list[dict], workdir: Path) -> dict:
    if backend == "sqlite":
        return run_arm(arm, rows, workdir)
    from bench.common import temp_pg_database

    with temp_pg_database("pedigree_bench_dedup_pii") as url:
        try:
            return run_arm(arm, rows, workdir, db_url=url)
        finally:
            from app.core.db import get_engine

            get_engine().dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dedup_pii", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--templates", type=int, default=80, help="templates (the 12 tool-use ones plus mined ones)")
    ap.add_argument("--entities", type=int, default=4, help="different entities per template")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    templates, values = mine()
    rows = build(templates, values, args.templates, args.entities, seed=args.seed)
    groups = len({r["provenance"]["metadata"]["label"] for r in rows})
    print(f"mined {len(templates)} single-entity questions, {sum(map(len, values.values()))} entity values "
          f"({', '.join(f'{k} {len(v)}' for k, v in sorted(values.items()))}); {len(rows)} rows in {groups} "
          f"labelled questions ({time.perf_counter() - t0:.1f} s)", flush=True)
    figures: dict[str, dict] = {}
    for arm in ("off", "scrubbed_text", "view"):
        with tempfile.TemporaryDirectory(prefix=f"pedigree-bench-dedup-pii-{arm}-") as tmp:
            figures[arm] = score(rows, _arm(args.backend, arm, rows, Path(tmp)))
        f = figures[arm]
        print(f"{arm:<14} links {f['links']:>4}  right {f['right']:>4}  wrong {f['wrong']:>4}  precision "
              f"{f['precision']:.4f}  recall {f['recall']:.4f}  exact {f['exact_links']:>3}  scrubbed "
              f"{f['scrubbed_share']:.3f}  {f['seconds']:.1f} s", flush=True)
        for a, b in f["wrong_examples"]:
            print(f"    wrong: {a!r}  ->  {b!r}")
    print("recall by variant kind: " + "; ".join(f"{arm} {figures[arm]['recall_by_kind']}" for arm in figures))
    off, view = figures["off"], figures["view"]
    checks = {
        "precision_view": view["precision"] >= TARGETS["precision_view_min"],
        "precision_same_as_off": view["precision"] >= off["precision"] - TARGETS["precision_vs_off_max_drop"],
        "exact_links_kept": view["exact_links"] >= off["exact_links"] > 0,
    }
    out = {
        "bench": "dedup_pii",
        "rows": len(rows),
        "labelled_questions": groups,
        "backend": args.backend,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "figures": {arm: {k: v for k, v in f.items() if k != "wrong_examples"} for arm, f in figures.items()},
        "targets": TARGETS,
        "checks": checks,
        "pass": all(checks.values()),
    }
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
