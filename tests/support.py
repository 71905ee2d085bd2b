"""Real Celery worker processes for tests: one way to start, stop and isolate them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]

# Redis databases for the tests, so that no test can flush a queue another test is using.
# Database = worker * len(REDIS_SLOTS) + slot, worker = the xdist worker's number (0 without xdist):
# gw0 holds 0-5, gw1 6-11; 12-15 stay the benchmarks' (bench/pii 12, bench/dedup 14, bench/common 15).
# Tests on one xdist worker run one at a time, so fixtures may share a slot when each flushes its
# database before and after and stops every process it started before that last flush; the slots
# keep apart what runs real consumers, so a straggler of one kind can never take another's tasks.
# The host and port come from PEDIGREE_TEST_REDIS (its database index is ignored).
REDIS_SLOTS = {
    "plain": 0,        # the `redis_url` fixture (metrics, readiness, throttle, LSH) and brokers with no worker
    "dedup_race": 1,   # tests/dedup/test_worker_race.py: racing CPU workers
    "stage_lease": 2,  # tests/faults/test_stage_lease.py
    "workers": 3,      # the `worker_env` fixture: foundation / PII Celery workers
    "train": 4,        # training stacks and the trainer's own Celery worker test (queue "train")
    "evaluate": 5,     # evaluation stacks (e2e, bias), which run trainers on queue "train" too
}
_FIRST_BENCH_DB = 12


def redis_db_url(slot: str) -> str:
    """This xdist worker's Redis database for `slot` (see REDIS_SLOTS)."""
    base = os.environ.get("PEDIGREE_TEST_REDIS", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    n = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    db = n * len(REDIS_SLOTS) + REDIS_SLOTS[slot]
    if db >= _FIRST_BENCH_DB:
        raise RuntimeError(f"xdist worker {n} would need Redis database {db}: this layout runs at most "
                           f"{_FIRST_BENCH_DB // len(REDIS_SLOTS)} workers (-n 2)")
    return f"{base}/{db}"


def start_worker(env: dict[str, str], queues: str = "default,pii,dedup", name: str = "w1") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
           "--concurrency", "1", "--pool", "prefork", "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
           "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen) -> bytes:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@contextmanager
def celery_env(pg: str, monkeypatch, slot: str) -> Iterator[dict[str, str]]:
    """Point this process and its workers at PostgreSQL and this xdist worker's Redis database for
    `slot` (REDIS_SLOTS), flushed before and after."""
    url = redis_db_url(slot)
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("PEDIGREE_REDIS_URL", url)
    monkeypatch.setenv("PEDIGREE_EMBEDDED", "false")
    from app.core import jobs
    from app.core.config import reset_settings

    reset_settings()
    jobs.celery_client.cache_clear()
    try:
        yield {**os.environ, "PEDIGREE_DATABASE_URL": pg, "PEDIGREE_REDIS_URL": url, "PEDIGREE_EMBEDDED": "false"}
    finally:
        redis.Redis.from_url(url).flushdb()


# Debian's headless Chromium, the browser the page tests drive (the brief names it; Playwright's own
# download is never used).
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[object]:
    """One headless Chromium for a test module, closed after it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def scratch_database(backend: str, folder: Path, prefix: str) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database of `backend` for tests that build their own schema or serve
    their own API (migrations from revision one, a subprocess server); a PostgreSQL one is dropped on exit
    even with connections still open."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / f'{prefix}.db'}"
        return
    import uuid

    import psycopg

    from tests.conftest import PG_ADMIN_URL

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
