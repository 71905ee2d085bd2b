"""The fault suite's own services: a PostgreSQL cluster and a redis-server per xdist worker, on free
ports, which the tests kill and restart (never the shared 5432/6379), and real worker, beat and API
processes started in their own process groups so a SIGKILL takes the whole process tree, as a
container kill or the OOM killer would.

Recovery timings are the production mechanism with shorter settings (lease 6 s, sweep every 2 s) so
the suite stays within its budget; `PEDIGREE_TEST_FAULTS_LEASE_S=30 PEDIGREE_TEST_FAULTS_SWEEP_S=10` runs it
with the shipped defaults (docs/reliability.md has both sets of figures).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = float(os.environ.get("PEDIGREE_TEST_FAULTS_LEASE_S", "6"))
SWEEP_S = float(os.environ.get("PEDIGREE_TEST_FAULTS_SWEEP_S", "2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PgCluster:
    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin, self.root, self.port = bin_dir, root, free_port()
        self.data = root / "data"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        # fsync off: the faults are process crashes, not power cuts, so what was written survives
        # in the page cache and crash recovery replays it; the suite is spared the disk flushes.
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB")
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                                     "-w", "-t", "60", "-o", opts, *args]), check=True, capture_output=True)

    def init(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                     "-E", "UTF8", "--locale=C", "--no-sync"]), check=True, capture_output=True)
        self._ctl("start")

    def restart_immediate(self) -> None:
        """A crash: no checkpoint, clients cut off, recovery from the WAL at start."""
        self._ctl("-m", "immediate", "restart")

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       check=False, capture_output=True)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"


class RedisServer:
    """redis-server with AOF on, as in docker-compose.yml; `kill9()` + `start()` keep port and files."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def fault_pg() -> Iterator[PgCluster]:
    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("redis-server") is None:
        pytest.skip("the fault suite needs PostgreSQL's server binaries and redis-server")
    # Not pytest's tmp_path: its parents are 0700 root-owned, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="pedigree-faults-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PgCluster(bin_dir, root)
    cluster.init()
    # A template built once by the migrations; each test copies it (a copy is a file copy, ~0.2 s).
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "pedigree_template"')
    env_before = dict(os.environ)
    os.environ.update(PEDIGREE_DATABASE_URL=cluster.url("pedigree_template"), PEDIGREE_EMBEDDED="true")
    os.environ.pop("PEDIGREE_REDIS_URL", None)
    from app.core.config import reset_settings
    from app.core.db import _engine_for, get_engine
    from app.core.migrate import upgrade_head

    reset_settings()
    upgrade_head()
    get_engine().dispose()
    _engine_for.cache_clear()
    os.environ.clear()
    os.environ.update(env_before)
    reset_settings()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_redis(fault_pg: PgCluster) -> Iterator[RedisServer]:
    root = Path(tempfile.mkdtemp(prefix="pedigree-faults-redis-"))
    server = RedisServer(root)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill9()
    shutil.rmtree(root, ignore_errors=True)


class Stack:
    """This test's database on the fault cluster, the fault Redis, and the processes it started."""

    def __init__(self, pg: PgCluster, rds: RedisServer, db: str, env: dict[str, str], logs: Path) -> None:
        self.pg, self.redis, self.db, self.env, self.logs = pg, rds, db, env, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._spawn(name, [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                                  "-Q", "default,pii,dedup", "--concurrency", "1", "--pool", "prefork",
                                  "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO",
                                  "--without-gossip", "--without-mingle", "--without-heartbeat"])

    def start_beat(self) -> subprocess.Popen:
        return self._spawn("beat", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                                    "-s", str(self.logs / "beat-schedule"), "--loglevel", "INFO"])

    def start_api(self, name: str = "api") -> str:
        port = free_port()
        self._spawn(name, [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                           "--port", str(port), "--no-access-log"])
        base = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                raise RuntimeError(f"the API did not start: {self.log(name)[-2000:]}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL the process and every child of it (its own process group)."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def sql(self, query: str, *args: object) -> list[tuple]:
        with psycopg.connect(self.pg.admin_url.rsplit("/", 1)[0] + f"/{self.db}", autocommit=True) as conn:
            return conn.execute(query, args).fetchall()

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture
def stack(fault_pg: PgCluster, fault_redis: RedisServer, monkeypatch, tmp_path: Path) -> Iterator[Stack]:
    """A fresh database (copied from the template), an empty Redis, and settings for this process and
    the processes the test starts."""
    db = f"faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(fault_pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "pedigree_template"')
    if fault_redis.proc is None or fault_redis.proc.poll() is not None:
        fault_redis.start()
    redis.Redis.from_url(fault_redis.url).flushall()
    settings = {"PEDIGREE_DATABASE_URL": fault_pg.url(db), "PEDIGREE_REDIS_URL": fault_redis.url,
                "PEDIGREE_EMBEDDED": "false", "PEDIGREE_STAGE_LEASE_S": str(LEASE_S),
                "PEDIGREE_SWEEP_INTERVAL_S": str(SWEEP_S)}
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    from app.core import jobs
    from app.core.config import reset_settings

    reset_settings()
    jobs.celery_client.cache_clear()
    s = Stack(fault_pg, fault_redis, db, {**os.environ, **settings}, tmp_path)
    try:
        yield s
    finally:
        s.close()
        from app.core.auth import USES
        from app.core.db import _engine_for, get_engine

        USES.forget()  # last-used notes for keys of the database about to be dropped
        get_engine().dispose()
        _engine_for.cache_clear()
        jobs.celery_client.cache_clear()
        with psycopg.connect(fault_pg.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
