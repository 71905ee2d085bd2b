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
def celery_env(pg: str, redis_url: str, monkeypatch, db_base: int) -> Iterator[dict[str, str]]:
    """Point this process and its workers at PostgreSQL and a Redis database of their own
    (`db_base` + xdist worker number), flushed before and after, so parallel suites never share a queue.
    Taken: 3-4 dedup race, 7-8 foundation/pii workers, 9 pii queued (no worker), 11 training e2e, 12 bench/pii, 13 trainer worker,
    14 bench/dedup, 15 bench/common."""
    n = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    url = redis_url.rsplit("/", 1)[0] + f"/{db_base + n}"
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
