"""A 500 answers in the house error shape and keeps the keep-alive connection open.

Runs a real uvicorn server (in a thread, so a real route's service can be made to fail) and talks to
it over one http.client connection, the way a pooled client does.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import orjson
import pytest

from tests.factories import make_keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_connection_survives_a_500(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from app.datasets import service as datasets
    from app.main import create_app

    def _broken(session):
        raise RuntimeError("simulated bug in a service")

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="critical",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        key = make_keys()["curator"]
        monkeypatch.setattr(datasets, "list_all", _broken)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/datasets", headers={"Authorization": f"Bearer {key}"})
        first = conn.getresponse()
        body = orjson.loads(first.read())
        assert first.status == 500
        assert body["error"]["code"] == "internal_error" and set(body["error"]) == {"code", "message", "details"}
        assert (first.getheader("connection") or "").lower() != "close"
        sock = conn.sock
        assert sock is not None, "the client dropped the socket: the server asked to close it"

        conn.request("GET", "/healthz")
        second = conn.getresponse()
        assert second.status == 200 and orjson.loads(second.read()) == {"ok": True}
        assert conn.sock is sock  # the same TCP connection answered both
    finally:
        server.should_exit = True
        thread.join(timeout=10)
