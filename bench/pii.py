"""PII scrubbing throughput: our batched path vs the naive loop, and 1 vs 2 processes.

    python -m bench.pii [--texts 2400] [--corpus-dir ../shared/corpora] [--processes 1 2] [--model NAME]

* naive: Presidio as its README shows it: AnalyzerEngine with the full en_core_web_sm pipeline and every
  predefined recognizer, one `analyzer.analyze` + `anonymizer.anonymize` per text.
* ours: app.pii.scrub.scrub_examples on batches of instruction examples (what the `pii` stage runs): NER-only
  spaCy pipeline through `nlp.pipe`, explicit entity list, five phone regions, identical texts analyzed
  once, structure kept, findings built. `--model` picks our engine's spaCy model (PEDIGREE_PII_SPACY_MODEL,
  e.g. en_core_web_md); the naive loop stays on en_core_web_sm, the baseline the target was set against.
* the two are timed slice by slice, taking turns (`--rounds`, default 20 slices of about 120 texts), in
  wall time and in the process's CPU time. The target reads CPU time (per core: what the scrubber costs a
  core, whatever else shares it); wall-clock docs/s and the per-slice ratios are printed beside it.
* scaling: the same batched path in N worker processes, each building its engine once at start (as a Celery
  worker does in worker_process_init); the clock starts when all engines are built.
* --worker-path: the real thing. A throwaway PostgreSQL database built by the migrations, the texts
  ingested as instruction examples and parked at the `pii` stage, then N `celery worker -Q pii
  --concurrency 1` processes (started and warm before the clock starts) drain it through Redis: run_stage
  locks, scrubs, writes revisions, findings, vault rows and audit events. docs/s = examples / wall time.

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
import statistics
import sys
import time
from pathlib import Path

# One thread per process: the benchmark measures per-core throughput and process scaling, and BLAS
# threads fighting over the same cores would blur both.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

TARGET_SPEEDUP = 3.0  # #15: "stays >= 3x the naive loop per core"
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


def naive_all(analyzer, anonymizer, texts: list[str]) -> None:
    for text in texts:
        results = analyzer.analyze(text, language="en")
        anonymizer.anonymize(text=text, analyzer_results=results)


def run_interleaved(texts: list[str], rounds: int) -> dict:
    """Ours and the naive loop on the same slices, one after the other, alternating which goes first.

    Measured one whole path after the other, the ratio moved with whatever else the machine ran in between
    (2.2x to 3.5x at load averages 3-8 on the 2-core machine, #15): a neighbour's burst landed on one path
    only. Slice by slice both paths see the same load within seconds of each other; the speed-up is total
    naive time over total ours time, and the per-slice ratios show the spread.
    """
    from app.pii.engine import get_engine

    analyzer, anonymizer = build_naive()
    get_engine()
    # Warm-up outside the clock: both paths, on texts of both kinds, so the vocabularies and caches of
    # neither are cold when its first slice is timed.
    warm = texts[:BATCH] + texts[-BATCH:]
    naive_all(analyzer, anonymizer, warm)
    scrub_all(warm)
    # Strided slices: each holds the same mix of PII sentences and Dolly pairs, so the per-slice ratios
    # differ by load, not by what the slice holds.
    slices = [texts[k::rounds] for k in range(rounds)]
    wall = {"ours": [], "naive": []}
    cpu = {"ours": [], "naive": []}
    findings = 0
    for k, part in enumerate(slices):
        for which in (("ours", "naive") if k % 2 == 0 else ("naive", "ours")):
            t0, c0 = time.perf_counter(), time.process_time()
            if which == "ours":
                findings += scrub_all(part)
            else:
                naive_all(analyzer, anonymizer, part)
            wall[which].append(time.perf_counter() - t0)
            cpu[which].append(time.process_time() - c0)
    return {"ours_s": sum(wall["ours"]), "naive_s": sum(wall["naive"]),
            "ours_cpu_s": sum(cpu["ours"]), "naive_cpu_s": sum(cpu["naive"]),
            "ratios": [n / o for n, o in zip(wall["naive"], wall["ours"])],
            "cpu_ratios": [n / o for n, o in zip(cpu["naive"], cpu["ours"])], "findings": findings}


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


# --- the real worker path ----------------------------------------------------------------------------------

WORKER_CHUNK = 100  # ids per task: small enough that two workers share the work evenly


def _seed(env: dict[str, str], texts: list[str]) -> list[str]:
    """Ingest the texts through app.examples.ingest and park them at the pii stage; returns their ids."""
    os.environ.update(env)
    from sqlalchemy import select, update

    from app.core.auth import SYSTEM
    from app.core.config import reset_settings
    from app.core.db import session_scope
    from app.examples import ingest, parsing
    from app.models.auth import Workspace
    from app.models.dataset import Dataset
    from app.models.example import Example

    reset_settings()
    with session_scope() as s:
        # Every dataset belongs to a workspace (priv03); the worker path does not care which.
        ws = s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        ds = Dataset(name=f"bench-pii-{os.getpid()}-{time.time_ns()}", format="instruction", created_by="bench",
                     workspace_id=ws)
        s.add(ds)
        s.flush()
        batch = ingest.open_batch(s, dataset=ds, actor=SYSTEM, channel="api", atomic=True,
                                  defaults=parsing.Defaults(source="bench"))
        cands = [parsing.prepare("instruction", {"instruction": t, "output": "ok"}, i + 1, parsing.Defaults(source="bench"))
                 for i, t in enumerate(texts)]
        ingest.store(s, dataset=ds, batch_id=batch.id, actor=SYSTEM, candidates=cands)
        s.flush()
        s.execute(update(Example).where(Example.dataset_id == ds.id, Example.status == "ingested").values(stage="pii"))
        ids = [str(i) for i in s.scalars(select(Example.id).where(Example.dataset_id == ds.id,
                                                                  Example.stage == "pii"))]
    return ids


def _start_worker(env: dict[str, str], name: str, log_path: Path):
    import subprocess

    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "pii", "--concurrency", "1",
         "--pool", "prefork", "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=Path(__file__).resolve().parents[1], env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def run_worker_path(texts: list[str], workers: int) -> float:
    import redis
    from sqlalchemy import text

    from bench.common import bench_env, migrate, temp_pg_database

    redis_url = os.environ.get("PEDIGREE_BENCH_PII_REDIS", "redis://127.0.0.1:6379/12")
    with temp_pg_database("pedigree_bench_pii") as url:
        env = bench_env(url, redis_url)
        migrate(env)
        ids = _seed(env, texts)
        redis.Redis.from_url(redis_url).flushdb()  # the quality tasks ingest enqueued: not measured here
        import tempfile

        logs = [Path(tempfile.gettempdir()) / f"bench-pii-worker-{os.getpid()}-{i}.log" for i in range(workers)]
        procs = [_start_worker(env, f"benchpii{i}-{os.getpid()}", logs[i]) for i in range(workers)]
        try:
            for proc, log in zip(procs, logs):  # warm: the engine is built in worker_process_init
                _wait_ready(proc, log)
            from app.core.db import get_engine
            from app.core.jobs import celery_client
            from app.pipeline.service import RUN_STAGE_TASK

            client = celery_client(redis_url)
            t0 = time.perf_counter()
            for i in range(0, len(ids), WORKER_CHUNK):
                client.send_task(RUN_STAGE_TASK, args=["pii", ids[i : i + WORKER_CHUNK]], queue="pii")
            deadline = time.time() + 1200
            with get_engine().connect() as conn:
                while conn.execute(text("SELECT count(*) FROM examples WHERE stage = 'pii'")).scalar():
                    conn.rollback()
                    if time.time() > deadline or any(p.poll() is not None for p in procs):
                        raise RuntimeError(f"pii stage not drained; worker log: {logs[0]}")
                    time.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except Exception:  # noqa: BLE001
                    proc.kill()
            get_engine().dispose()
            redis.Redis.from_url(redis_url).flushdb()
        return len(ids) / elapsed


def _wait_ready(proc, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if b" ready." in log_path.read_bytes():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("worker did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pii", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2400, help="number of texts (>= 2000 for the targets)")
    parser.add_argument("--corpus-dir", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--reps", type=int, default=3,
                        help="process-scaling repetitions (1 and 2 processes alternating); medians reported")
    parser.add_argument("--worker-path", action="store_true",
                        help="also measure the real pipeline: PostgreSQL + Redis + celery workers (1 and 2)")
    parser.add_argument("--rounds", type=int, default=20,
                        help="slices that ours and the naive loop take turns on (same load for both)")
    parser.add_argument("--model", default=None, help="our engine's spaCy model (the naive loop keeps sm)")
    args = parser.parse_args(argv)
    _quiet()
    if args.model:
        # Read by get_engine() here and in the spawned processes, which inherit the environment.
        os.environ["PEDIGREE_PII_SPACY_MODEL"] = args.model
    from app.pii.engine import get_engine

    model = get_engine().info.model

    load_start = os.getloadavg()[0]
    texts = load_texts(args.corpus_dir, args.texts)
    chars = sum(len(t) for t in texts)
    print(f"{len(texts)} texts, {chars} chars, cpus={os.cpu_count()}", flush=True)

    naive_dps, slice_ratios, cpu_ratios, cpu_speedup, inter = None, [], [], None, {}
    if args.skip_naive:
        ours_s, findings = run_ours(texts)
    else:
        inter = run_interleaved(texts, args.rounds)
        ours_s, findings, slice_ratios = inter["ours_s"], inter["findings"], inter["ratios"]
        cpu_ratios = inter["cpu_ratios"]
        naive_dps = len(texts) / inter["naive_s"]
        cpu_speedup = inter["naive_cpu_s"] / inter["ours_cpu_s"]
    ours_dps = len(texts) / ours_s
    print(f"ours (batched, 1 process): {ours_dps:8.1f} docs/s  ({findings} findings)", flush=True)
    if naive_dps:
        print(f"naive loop (1 process):    {naive_dps:8.1f} docs/s  (interleaved in {len(slice_ratios)} slices; "
              f"per-slice speed-up {', '.join(f'{r:.2f}' for r in slice_ratios)})", flush=True)
        print(f"per CPU second: ours {len(texts) / inter['ours_cpu_s']:.1f} docs, naive "
              f"{len(texts) / inter['naive_cpu_s']:.1f} docs: {cpu_speedup:.2f}x (per slice "
              f"{', '.join(f'{r:.2f}' for r in cpu_ratios)})", flush=True)

    # Alternating repetitions, medians: on a 2-core machine any neighbour's burst lands on one side of a
    # single 1-vs-2 comparison and moves the ratio by more than the 1.8 target's margin.
    runs: dict[int, list[float]] = {n: [] for n in args.processes}
    rep_scaling: list[float] = []
    for rep in range(max(1, args.reps)):
        for n in args.processes:
            runs[n].append(len(texts) / run_processes(texts, n))
            print(f"ours, {n} process(es), rep {rep + 1}: {runs[n][-1]:8.1f} docs/s", flush=True)
        if 1 in runs and 2 in runs:
            rep_scaling.append(runs[2][-1] / runs[1][-1])
    per_procs = {n: statistics.median(v) for n, v in runs.items()}

    worker_dps: dict[int, float] = {}
    if args.worker_path:
        for n in args.processes:
            worker_dps[n] = run_worker_path(texts, n)
            print(f"worker path, {n} celery worker(s): {worker_dps[n]:8.1f} docs/s", flush=True)

    speedup = ours_dps / naive_dps if naive_dps else None
    scaling = statistics.median(rep_scaling) if rep_scaling else None
    # Per core is per CPU second: a process's CPU time does not count the time other work on the machine
    # held the core, which wall time does (on the shared 2-core machine at load 12 the wall-clock ratio
    # of one slice ran from 1.2 to 5.4, #15). Wall-clock figures stay beside it.
    passed = (cpu_speedup is not None and cpu_speedup >= TARGET_SPEEDUP
              and (scaling is None or scaling >= TARGET_SCALING))  # scaling: only when 1 and 2 ran
    summary = {
        "bench": "pii",
        "model": model,
        "naive_model": "en_core_web_sm",
        "texts": len(texts),
        "chars": chars,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
        # Other work on the machine skews the scaling figure first: the load average says how much there was.
        "load_avg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "ours_docs_per_s": round(ours_dps, 1),
        "naive_docs_per_s": round(naive_dps, 1) if naive_dps else None,
        "speedup_vs_naive": round(speedup, 2) if speedup else None,
        "speedup_per_cpu_second": round(cpu_speedup, 2) if cpu_speedup else None,
        "speedup_per_cpu_second_per_slice": [round(r, 2) for r in cpu_ratios],
        "ours_docs_per_cpu_s": round(len(texts) / inter["ours_cpu_s"], 1) if inter else None,
        "naive_docs_per_cpu_s": round(len(texts) / inter["naive_cpu_s"], 1) if inter else None,
        "speedup_per_slice": [round(r, 2) for r in slice_ratios],
        "speedup_per_slice_median": round(statistics.median(slice_ratios), 2) if slice_ratios else None,
        "processes_docs_per_s": {str(k): round(v, 1) for k, v in per_procs.items()},
        "scaling_1_to_2": round(scaling, 2) if scaling else None,
        "scaling_1_to_2_per_rep": [round(x, 2) for x in rep_scaling],
        "worker_path_docs_per_s": {str(k): round(v, 1) for k, v in worker_dps.items()} or None,
        "worker_path_scaling_1_to_2": (round(worker_dps[2] / worker_dps[1], 2)
                                       if 1 in worker_dps and 2 in worker_dps else None),
        "targets": {"speedup_per_cpu_second": TARGET_SPEEDUP, "scaling_1_to_2": TARGET_SCALING},
        "pass": passed,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
