"""The trainer's side of the training-run protocol: plain HTTP with a trainer-role key.

This is the only channel between a GPU host and the service (the trainer never imports `app`),
so every call is idempotent on the service side and retried here on transient failures.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx


class Conflict(Exception):
    """409: the run is not in a state that accepts this call (already started, cancelled, reaped)."""


class ApiClient:
    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
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

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kw) -> httpx.Response:
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                r = self._http.request(method, path, **kw)
            except httpx.TransportError:
                if attempt == self._retries:
                    raise
            else:
                if r.status_code == 409:
                    raise Conflict(r.text)
                # 5xx and 429 are worth another try; any other error is final.
                if r.status_code < 500 and r.status_code != 429:
                    r.raise_for_status()
                    return r
                if attempt == self._retries:
                    r.raise_for_status()
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

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
        with self._http.stream("GET", f"/v1/evaluations/{evaluation_id}/files/{name}") as r:
            if r.status_code == 409:
                raise Conflict(r.read().decode(errors="replace"))
            r.raise_for_status()
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f:
                f.writelines(r.iter_bytes(1 << 20))
            return dict(r.headers)

    def download_export(self, snapshot_id: str, dest: Path) -> str | None:
        """Stream the snapshot's pedigree JSONL to `dest`; returns the X-Manifest-SHA256 header."""
        params = {"format": "pedigree", "split": "all"}
        with self._http.stream("GET", f"/v1/snapshots/{snapshot_id}/export", params=params) as r:
            if r.status_code == 409:
                raise Conflict(r.read().decode(errors="replace"))
            r.raise_for_status()
            with open(dest, "wb") as f:
                f.writelines(r.iter_bytes(1 << 20))
            return r.headers.get("X-Manifest-SHA256")
