"""Shared helpers for the benchmarks: corpora, a throwaway PostgreSQL database, a real API server."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import orjson
import psycopg

from app.wiring import wire

# Every app-side benchmark imports this module and some call services in-process: like the API, the
# worker and the CLI, the benchmark process is an entry point and wires the registries (stages, view
# hooks, audit subscribers, in-process handlers). Wiring reads no settings, so the env set later holds.
wire()

ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("PEDIGREE_CORPORA", ROOT.parent / "shared" / "corpora"))
PG_ADMIN = os.environ.get("PEDIGREE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("PEDIGREE_BENCH_REDIS", "redis://127.0.0.1:6379/15")


def instruct_records() -> list[dict]:
    """Instruction/input/output records from the shared corpora (several sources, real lengths)."""
    d = CORPORA / "instruct"
    out: list[dict] = []
    for name in ("alpaca_libre_tasks_v1.jsonl", "alpaca_libre_tasks_v2.jsonl"):
        for line in (d / name).read_bytes().splitlines():
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if str(r.get("instruction") or "").strip() and str(r.get("output") or "").strip():
                out.append({"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"],
                            "_source": "alpaca-libre"})
    for line in (d / "dolly15k_first6400_flan-t5-xl_decode.jsonl").read_bytes().splitlines():
        r = orjson.loads(line)
        if str(r.get("instruction") or "").strip() and str(r.get("text") or "").strip():
            out.append({"instruction": r["instruction"], "input": "", "output": r["text"], "_source": "dolly"})
    for r in orjson.loads((d / "gpteacher_codegen-instruct.json").read_bytes()):
        if str(r.get("instruction") or "").strip() and str(r.get("response") or "").strip():
            out.append({"instruction": r["instruction"], "input": r.get("input") or "", "output": r["response"],
                        "_source": "gpteacher"})
    return out


def jsonl_examples(n: int, seed_records: list[dict] | None = None) -> Iterator[bytes]:
    """n distinct examples: the corpus cycled, later passes varied so contents (and hashes) differ."""
    recs = seed_records or instruct_records()
    for i in range(n):
        r = recs[i % len(recs)]
        k = i // len(recs)
        instruction = r["instruction"] if k == 0 else f"{r['instruction']} (variant {k})"
        yield orjson.dumps({
            "instruction": instruction, "input": r["input"], "output": r["output"],
            "provenance": {"source": r["_source"], "source_ref": f"bench-{i}", "license": "CC-BY-SA-3.0",
                           "collected_at": "2026-05-01T00:00:00Z"},
        })


@contextmanager
def temp_pg_database(prefix: str = "pedigree_bench") -> Iterator[str]:
    name = f"{prefix}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(db_url: str, redis_url: str | None = REDIS) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEDIGREE_")}
    env.update(PEDIGREE_DATABASE_URL=db_url, PEDIGREE_SECRET_KEY="bench-secret-0123456789abcdef",
               PEDIGREE_EMBEDDED="false",
               # Throwaway vault key for the raw-text vault (comma-separated base64 32-byte keys).
               PEDIGREE_PII_VAULT_KEYS=base64.b64encode(b"bench-vault-key-32-bytes-long!!!").decode())
    if redis_url:
        env["PEDIGREE_REDIS_URL"] = redis_url
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)


def create_key(env: dict[str, str], role: str = "admin") -> str:
    r = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role", role, "--name", f"bench-{role}"],
                       cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return r.stdout.strip().splitlines()[-1]


def observability_env(env: dict[str, str], on: bool, folder: Path) -> dict[str, str]:
    """The API's settings with metrics and structured logs on as in production (multiprocess metrics in
    `folder`, JSON lines) or off (no metrics, the servers' own text logs)."""
    out = dict(env)
    if on:
        (folder / "prometheus").mkdir(parents=True, exist_ok=True)
        out.update(PEDIGREE_METRICS="true", PEDIGREE_LOG_FORMAT="json",
                   PROMETHEUS_MULTIPROC_DIR=str(folder / "prometheus"))
    else:
        out.update(PEDIGREE_METRICS="false", PEDIGREE_LOG_FORMAT="text")
        out.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return out


class Scraper:
    """Prometheus in miniature: GET /metrics every `every_s` while the load runs, so the on side pays for
    its scrapes too (production scrapes every 15-30 s; 5 s is the harsher case)."""

    def __init__(self, url: str, key: str, every_s: float = 5.0) -> None:
        import threading

        self.url, self.key, self.every_s = url, key, every_s
        self.scrapes, self.failed = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        while True:  # one scrape at once, then every every_s until stopped
            try:
                r = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
                self.scrapes += 1
                self.failed += r.status_code != 200
            except httpx.HTTPError:
                self.failed += 1
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@contextmanager
def api_server(env: dict[str, str], workers: int = 1,
               log_path: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A uvicorn API. With `log_path`, as in production: INFO with the access log, written to that file
    (the observability comparison); without, quiet (warnings only, no access log) as the benches were."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    if log_path is None:
        proc = subprocess.Popen([*cmd, "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
    else:
        with open(log_path, "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([*cmd, "--log-level", "info"], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("API server did not start")
    try:
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
