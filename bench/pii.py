"""PII scrubbing throughput: our batched path vs the naive loop, and 1 vs 2 processes.

    python -m bench.pii [--texts 2400] [--corpus-dir ../shared/corpora] [--processes 1 2]

* naive: Presidio as its README shows it: AnalyzerEngine with the full en_core_web_sm pipeline and every
  predefined recognizer, one `analyzer.analyze` + `anonymizer.anonymize` per text.
* ours: app.pii.scrub.scrub_examples on batches of instruction examples (what the `pii` stage runs): NER-only
  spaCy pipeline through `nlp.pipe`, explicit entity list, five phone regions, identical texts analyzed
  once, structure kept, findings built.
* scaling: the same batched path in N worker processes, each building its engine once at start (as a Celery
  worker does in worker_process_init); the clock starts when all engines are built.

Texts: the PII corpus (presidio-research synthetic sentences, heavy in PII) and Dolly instruction/response
pairs (ordinary instruction data), so both the dense and the usual case are in the mix.
Both paths use the offline email validator (the stock one would try to fetch the public suffix list).
The last line of stdout is one JSON object: figures, targets, "pass".
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

# One thread per process: the benchmark measures per-core throughput and process scaling, and BLAS
# threads fighting over the same cores would blur both.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

TARGET_SPEEDUP = 2.0
TARGET_SCALING = 1.8
BATCH = 128
HASH_KEY = b"bench-pii-hash-key-0123456789abcdef"


def load_texts(corpus_dir: Path, n: int) -> list[str]:
    pii = json.loads((corpus_dir / "pii" / "presidio_synth_dataset_v2.json").read_text())
    texts = [r["full_text"] for r in pii]
    dolly = corpus_dir / "instruct" / "dolly15k_first6400_flan-t5-xl_decode.jsonl"
    with dolly.open() as fh:
        for line in fh:
            if len(texts) >= n:
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            texts.append(f"{rec.get('instruction', '')}\n{rec.get('text', '')}".strip())
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} texts available, asked for {n}")
    return texts[:n]


def _quiet() -> None:
    logging.disable(logging.WARNING)


# --- naive -------------------------------------------------------------------------------------------------


def build_naive():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer
    from presidio_anonymizer import AnonymizerEngine

    from app.pii.engine import resolve_model_package
    from app.pii.recognizers import offline_tld_extractor

    email_recognizer.tldextract.extract = offline_tld_extractor()  # no network, same work as stock
    package = resolve_model_package("en_core_web_sm")
    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": package}]}
    )
    return AnalyzerEngine(nlp_engine=provider.create_engine()), AnonymizerEngine()


def run_naive(texts: list[str]) -> float:
    analyzer, anonymizer = build_naive()
    analyzer.analyze(texts[0], language="en")  # warm-up outside the clock
    t0 = time.perf_counter()
    for text in texts:
        results = analyzer.analyze(text, language="en")
        anonymizer.anonymize(text=text, analyzer_results=results)
    return time.perf_counter() - t0


# --- ours --------------------------------------------------------------------------------------------------


def scrub_all(texts: list[str]) -> int:
    from app.pii.engine import get_engine
    from app.pii.schemas import PiiPolicy
    from app.pii.scrub import ScrubInput, scrub_examples

    engine, policy = get_engine(), PiiPolicy()
    findings = 0
    for i in range(0, len(texts), BATCH):
        items = [ScrubInput({"instruction": t}, key=str(i + j)) for j, t in enumerate(texts[i : i + BATCH])]
        for res in scrub_examples(engine, items, policy, hash_key=HASH_KEY):
            findings += len(res.findings)
    return findings


def run_ours(texts: list[str]) -> tuple[float, int]:
    from app.pii.engine import get_engine

    get_engine()
    scrub_all(texts[:BATCH])  # warm-up outside the clock
    t0 = time.perf_counter()
    findings = scrub_all(texts)
    return time.perf_counter() - t0, findings


def _worker_init() -> None:
    _quiet()
    from app.pii.engine import get_engine

    get_engine()
    scrub_all(["warm-up: call Jane Doe at 555-0100"])


def run_processes(texts: list[str], n: int) -> float:
    chunks = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(n, initializer=_worker_init) as pool:
        # Make every worker finish its init before the clock starts.
        pool.map(_noop, range(n * 4), chunksize=1)
        t0 = time.perf_counter()
        pool.map(scrub_all, chunks, chunksize=1)
        return time.perf_counter() - t0


def _noop(_: int) -> None:
    time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pii", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2400, help="number of texts (>= 2000 for the targets)")
    parser.add_argument("--corpus-dir", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args(argv)
    _quiet()

    texts = load_texts(args.corpus_dir, args.texts)
    chars = sum(len(t) for t in texts)
    print(f"{len(texts)} texts, {chars} chars, cpus={os.cpu_count()}", flush=True)

    ours_s, findings = run_ours(texts)
    ours_dps = len(texts) / ours_s
    print(f"ours (batched, 1 process): {ours_dps:8.1f} docs/s  ({findings} findings)", flush=True)
    naive_dps = None
    if not args.skip_naive:
        naive_s = run_naive(texts)
        naive_dps = len(texts) / naive_s
        print(f"naive loop (1 process):    {naive_dps:8.1f} docs/s", flush=True)

    per_procs: dict[int, float] = {}
    for n in args.processes:
        per_procs[n] = len(texts) / run_processes(texts, n)
        print(f"ours, {n} process(es):       {per_procs[n]:8.1f} docs/s", flush=True)

    speedup = ours_dps / naive_dps if naive_dps else None
    scaling = per_procs[2] / per_procs[1] if 1 in per_procs and 2 in per_procs else None
    passed = (speedup is not None and speedup >= TARGET_SPEEDUP and scaling is not None
              and scaling >= TARGET_SCALING)
    summary = {
        "bench": "pii",
        "texts": len(texts),
        "chars": chars,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
        "ours_docs_per_s": round(ours_dps, 1),
        "naive_docs_per_s": round(naive_dps, 1) if naive_dps else None,
        "speedup_vs_naive": round(speedup, 2) if speedup else None,
        "processes_docs_per_s": {str(k): round(v, 1) for k, v in per_procs.items()},
        "scaling_1_to_2": round(scaling, 2) if scaling else None,
        "targets": {"speedup_vs_naive": TARGET_SPEEDUP, "scaling_1_to_2": TARGET_SCALING},
        "pass": passed,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
