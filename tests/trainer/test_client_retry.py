"""The trainer client's file downloads under a flaky service: a real threaded HTTP server that drops
connections, cuts bodies short and answers 503/429 before it serves the file."""

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from trainer.client import ApiClient, Conflict

KEY = "trainer-key-123"
BODY = b"".join(b'{"id": "r%05d", "text": "%s"}\n' % (i, b"x" * 40) for i in range(20000))  # ~1 MB
SHA = hashlib.sha256(BODY).hexdigest()


class FlakyServer:
    """Serves BODY at every path; `script` lists what the first attempts get, one entry each:
    "drop" (close before any response), "cut" (headers with the full Content-Length, half the body,
    close), "503" (Retry-After: 0), "429:N" (Retry-After: N), or any other status code."""

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.requests: list[str] = []
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                svc.requests.append(self.path)
                step = svc.script.pop(0) if svc.script else "ok"
                if step == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if step.split(":")[0].isdigit() and step != "ok":
                    code, _, after = step.partition(":")
                    data = b'{"error": {"code": "x", "message": "x", "details": null}}'
                    self.send_response(int(code))
                    if code == "503" or after:
                        self.send_header("Retry-After", after or "0")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Content-Length", str(len(BODY)))
                self.send_header("X-Manifest-SHA256", "manifest-abc")
                self.send_header("X-Artifact-SHA256", SHA)
                self.end_headers()
                if step == "cut":
                    self.wfile.write(BODY[: len(BODY) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(BODY)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flaky():
    servers = []

    def make(*script):
        s = FlakyServer(list(script))
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _client(server, retries=3):
    return ApiClient(server.url, KEY, retries=retries, backoff=0.01, timeout=5)


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.rglob("*.part"))


def test_export_survives_a_drop_a_cut_body_and_a_503(flaky, tmp_path):
    server = flaky("drop", "cut", "503")
    dest = tmp_path / "export.jsonl"
    manifest = _client(server).download_export("s1", dest)
    assert manifest == "manifest-abc"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == SHA
    assert len(server.requests) == 4
    assert all(r.startswith("/v1/snapshots/s1/export?") for r in server.requests)
    assert _leftovers(tmp_path) == []


def test_evaluation_file_retries_and_its_hash_holds(flaky, tmp_path):
    server = flaky("cut", "502", "drop")
    dest = tmp_path / "files" / "adapter.tar.gz"
    headers = _client(server).download_evaluation_file("e1", "adapter", dest)
    # The worker's hash check compares this header with the file: the file is whole.
    assert headers["x-artifact-sha256"] == SHA
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == SHA
    assert server.requests == ["/v1/evaluations/e1/files/adapter"] * 4
    assert _leftovers(tmp_path) == []


def test_429_waits_out_its_retry_after(flaky, tmp_path):
    server = flaky("429:1")
    t0 = time.monotonic()
    _client(server).download_export("s1", tmp_path / "export.jsonl")
    assert time.monotonic() - t0 >= 0.9  # the backoff alone is 0.01 s
    assert len(server.requests) == 2


@pytest.mark.parametrize("code", ["404", "403", "422"])
def test_client_errors_are_final(flaky, tmp_path, code):
    server = flaky(code)
    dest = tmp_path / "export.jsonl"
    with pytest.raises(httpx.HTTPStatusError) as exc:
        _client(server).download_export("s1", dest)
    assert exc.value.response.status_code == int(code)
    assert len(server.requests) == 1
    assert not dest.exists()


def test_conflict_is_final_and_raised_as_such(flaky, tmp_path):
    server = flaky("409")
    with pytest.raises(Conflict):
        _client(server).download_evaluation_file("e1", "train", tmp_path / "train.jsonl")
    assert len(server.requests) == 1


def test_exhausted_retries_leave_no_partial_file_and_keep_an_earlier_one(flaky, tmp_path):
    server = flaky("cut", "cut", "cut")
    dest = tmp_path / "export.jsonl"
    dest.write_bytes(b"earlier good copy\n")
    with pytest.raises(httpx.TransportError):
        _client(server, retries=2).download_export("s1", dest)
    assert len(server.requests) == 3
    assert dest.read_bytes() == b"earlier good copy\n"
    assert _leftovers(tmp_path) == []


def test_exhausted_503s_raise_the_status(flaky, tmp_path):
    server = flaky("503", "503")
    with pytest.raises(httpx.HTTPStatusError) as exc:
        _client(server, retries=1).download_evaluation_file("e1", "train", tmp_path / "t.jsonl")
    assert exc.value.response.status_code == 503
    assert len(server.requests) == 2
    assert not (tmp_path / "t.jsonl").exists()
