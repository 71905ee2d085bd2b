"""The Python SDK (`pedigree.client`) against a live API: uvicorn in a subprocess over the test database,
typed results, cursor iteration, streamed imports with progress, typed errors from the Error body, and
retries on connection errors and 503. The CLI's remote mode goes through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pedigree.client import (
    Client,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from tests.factories import instruction_line, make_keys

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                                 str(port), "--log-level", "warning"], cwd=ROOT, env=dict(os.environ), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)


@contextmanager
def live_server(log: Path) -> Iterator[str]:
    """A uvicorn process of the API on a free port, with this process's environment; yields its URL."""
    port = _free_port()
    proc = _serve(port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def live(db: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    keys = make_keys()
    with live_server(tmp_path / "api.log") as url:
        yield url, keys


def test_datasets_imports_pages_and_typed_errors(live, tmp_path):
    url, keys = live
    with Client(url, keys["curator"]) as pd:
        ds = pd.create_dataset("sdk-support", format="instruction")
        assert ds.name == "sdk-support" and ds.format == "instruction"
        path = tmp_path / "lines.jsonl"
        path.write_text("".join(json.dumps(instruction_line(i)) + "\n" for i in range(1203)))
        seen: list[int] = []
        res = pd.import_examples(ds.id, path, source_name="sdk", progress=seen.append)
        assert (res.accepted, res.rejected) == (1203, 0)
        assert seen == [500, 1000, 1203]  # after every chunk sent, the last one short
        # An iterable of dicts, one line bad: the line is named, the rest stored.
        res = pd.import_examples(ds.id, [instruction_line(5000), {"instruction": "", "output": "x"}])
        assert res.accepted == 1 and res.rejected == 1 and res.errors[0].line == 2
        got = list(pd.iter_examples(ds.id, page_size=200))
        assert len(got) == 1204 and len({e.id for e in got}) == 1204
        one = pd.get_example(got[0].id)
        assert one.id == got[0].id and str(one.dataset_id) == str(ds.id)  # DatasetOut.id is a UUID, the rest strings
        assert pd.get_dataset(ds.id).counts  # typed DatasetOut with the counts by status

        with pytest.raises(NotFound) as nf:
            pd.get_dataset("no-such-dataset")
        assert nf.value.status == 404 and nf.value.code == "not_found"
        with pytest.raises(ValidationFailed) as bad:
            pd.create_dataset("x", format="poetry")
        assert bad.value.details[0]["field"] == "format"
    with Client(url, keys["reviewer"]) as pd, pytest.raises(Forbidden):
        pd.create_dataset("not-mine", format="chat")
    with Client(url, "pdg_not-a-real-key") as pd, pytest.raises(Unauthorized):
        pd.list_datasets()


def test_connection_errors_are_retried_until_the_server_is_up(db, tmp_path):
    keys = make_keys()
    port = _free_port()
    started: list[subprocess.Popen] = []
    starter = threading.Timer(1.0, lambda: started.append(_serve(port, tmp_path / "api.log")))
    starter.start()
    try:
        # Nothing listens yet: the first attempts are refused; the server comes up within the backoff.
        with Client(f"http://127.0.0.1:{port}", keys["curator"], retries=8, backoff_s=0.5) as pd:
            assert pd.list_datasets() == []
    finally:
        starter.join()
        for proc in started:
            proc.terminate()
            proc.wait(timeout=20)


def test_503_is_retried_then_raised_with_the_error_body():
    attempts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # an API whose database is down answers 503 with the Error body
            attempts.append(self.path)
            body = json.dumps({"error": {"code": "not_ready", "message": "not ready: database", "details": None}})
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{srv.server_address[1]}", "k", retries=2, backoff_s=0.05) as pd:
            t0 = time.perf_counter()
            with pytest.raises(Unavailable) as e:
                pd.list_datasets()
        assert len(attempts) == 3 and e.value.code == "not_ready"
        assert time.perf_counter() - t0 >= 0.05 + 0.1  # backed off between attempts
    finally:
        srv.shutdown()


def test_the_cli_remote_mode_imports_through_the_sdk(live, tmp_path):
    url, keys = live
    with Client(url, keys["curator"]) as pd:
        ds = pd.create_dataset("cli-remote", format="instruction")
    path = tmp_path / "remote.jsonl"
    path.write_text("".join(json.dumps(instruction_line(i)) + "\n" for i in range(7)))
    out = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(path), "--dataset", str(ds.id), "--api-url", url,
                          "--api-key", keys["curator"]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == 7
    out = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(path), "--dataset", "nope", "--api-url", url,
                          "--api-key", keys["curator"]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 1 and "404" in out.stderr


def test_importing_the_client_pulls_no_server_stack():
    code = ("import sys; from pedigree.client import Client; "
            "print(sorted(m for m in ('sqlalchemy', 'celery', 'fastapi', 'torch', 'presidio_analyzer', 'spacy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
