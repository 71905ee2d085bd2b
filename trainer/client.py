"""The trainer's side of the training-run protocol: plain HTTP with a trainer-role key.

This is the only channel between a GPU host and the service (the trainer never imports `app`),
so every call is idempotent on the service side and retried here on transient failures.
"""

from __future__ import annotations

import os
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

# A Retry-After longer than this is not waited out: the job's own deadline (and the reaper) is the
# better judge of a service that asks for minutes.
MAX_RETRY_AFTER = 30.0


class Conflict(Exception):
    """409: the run is not in a state that accepts this call (already started, cancelled, reaped)."""


class _Transient(Exception):
    """A response worth another try (5xx, 429); carries it so the last attempt can raise it."""

    def __init__(self, response: httpx.Response):
        super().__init__(response.status_code)
        self.response = response


def _check(r: httpx.Response) -> None:
    if r.status_code == 409:
        raise Conflict(r.read().decode(errors="replace"))
    # 5xx and 429 are worth another try; any other error is final.
    if r.status_code >= 500 or r.status_code == 429:
        raise _Transient(r)
    r.raise_for_status()


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ApiClient:
    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        request_id: str | None = None,
    ):
        headers = {"Authorization": f"Bearer {key}"}
        if request_id:
            # The id of the request that queued the run: the API's log lines for this run's calls carry
            # it, so one grep follows a run from its creation to its last report.
            headers["X-Request-ID"] = request_id
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
        )
        self._retries = retries
        self._backoff = backoff

    def close(self) -> None:
        self._http.close()

    def _retrying(self, attempt):
        """Call `attempt()` until it returns, at most `retries` more times after the first: again on a
        dropped connection or timeout (httpx.TransportError) or a 5xx/429 (`_Transient`), after an
        exponential backoff or the server's Retry-After if longer; any other error is final. Every
        call it wraps is idempotent on the service side, so another try is always safe."""
        for n in range(self._retries + 1):
            try:
                return attempt()
            except httpx.TransportError:
                if n == self._retries:
                    raise
                delay = self._backoff * 2**n
            except _Transient as exc:
                if n == self._retries:
                    exc.response.raise_for_status()
                delay = max(self._backoff * 2**n, _retry_after(exc.response) or 0.0)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, **kw) -> httpx.Response:
        def attempt() -> httpx.Response:
            r = self._http.request(method, path, **kw)
            _check(r)
            return r

        return self._retrying(attempt)

    def _download(self, path: str, dest: Path, params: dict | None = None) -> httpx.Headers:
        """Stream GET `path` to `dest` under the same retry policy as every other call; returns the
        response headers. Each attempt restarts from byte 0 into a temp file beside `dest` that
        replaces it only once the whole body is in (httpx raises on a body shorter than its
        Content-Length or a cut chunked stream), so a dropped attempt never leaves a truncated file
        for the caller's hash check to read, and never clobbers an earlier good one."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")

        def attempt() -> httpx.Headers:
            with self._http.stream("GET", path, params=params) as r:
                _check(r)
                try:
                    with open(part, "wb") as f:
                        f.writelines(r.iter_bytes(1 << 20))
                    os.replace(part, dest)
                finally:
                    part.unlink(missing_ok=True)
                return r.headers

        return self._retrying(attempt)

    def get_run(self, run_id: str) -> dict:
        return self._send("GET", f"/v1/training-runs/{run_id}").json()

    def start(self, run_id: str, worker_host: str) -> dict:
        return self._send(
            "POST", f"/v1/training-runs/{run_id}/start", json={"worker_host": worker_host}
        ).json()

    # `resource` is "training-runs" or "evaluations": the two protocols share these three calls.
    def events(self, run_id: str, events: list[dict], resource: str = "training-runs") -> None:
        self._send("POST", f"/v1/{resource}/{run_id}/events", json={"events": events})

    def complete(self, run_id: str, body: dict, resource: str = "training-runs") -> dict:
        return self._send("POST", f"/v1/{resource}/{run_id}/complete", json=body).json()

    def fail(self, run_id: str, code: str, message: str, resource: str = "training-runs") -> None:
        self._send("POST", f"/v1/{resource}/{run_id}/fail", json={"code": code, "message": message})

    # -- evaluations (docs/evaluation.md, "The wire protocol") --

    def get_evaluation(self, evaluation_id: str) -> dict:
        return self._send("GET", f"/v1/evaluations/{evaluation_id}").json()

    def start_evaluation(self, evaluation_id: str, worker_host: str) -> dict:
        return self._send(
            "POST", f"/v1/evaluations/{evaluation_id}/start", json={"worker_host": worker_host}
        ).json()

    def evaluation_spec(self, evaluation_id: str) -> dict:
        return self._send("GET", f"/v1/evaluations/{evaluation_id}/spec").json()

    def download_evaluation_file(self, evaluation_id: str, name: str, dest: Path) -> dict:
        """Stream one of the evaluation's files (a wire name such as `train`, `eval_sets/x`, `adapter`)
        to `dest`; returns the response headers."""
        return dict(self._download(f"/v1/evaluations/{evaluation_id}/files/{name}", dest))

    def download_export(self, snapshot_id: str, dest: Path) -> str | None:
        """Stream the snapshot's pedigree JSONL to `dest`; returns the X-Manifest-SHA256 header."""
        params = {"format": "pedigree", "split": "all"}
        headers = self._download(f"/v1/snapshots/{snapshot_id}/export", dest, params=params)
        return headers.get("X-Manifest-SHA256")
