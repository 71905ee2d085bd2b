"""A typed client for the Pedigree HTTP API, over httpx, with the service's own response models.

    from pedigree.client import Client

    with Client("http://pedigree:8000", key="pdg_...") as pd:
        ds = pd.create_dataset("support", format="instruction")
        res = pd.import_examples(ds.id, "tickets.jsonl", source="helpdesk", progress=print)
        for ex in pd.iter_examples(ds.id, status="pending_review"):
            print(ex.id, ex.status)

- Responses are parsed into the pydantic models the routes declare (`app/<domain>/schemas.py`), so the
  fields a client reads are the fields the OpenAPI document states.
- Errors raise typed exceptions built from the one error body `{"error": {"code", "message", "details"}}`:
  `Unauthorized` (401), `Forbidden` (403), `NotFound` (404), `Conflict` (409), `PayloadTooLarge` (413),
  `ValidationFailed` (422), `Unavailable` (503 after the retries), else `ApiError`.
- 503 answers and connection errors are retried with exponential backoff (`retries`, `backoff_s`) for
  requests that are safe to repeat: every GET, and imports, whose lines are idempotent by
  `source_ref`. An import from a one-shot iterator cannot be replayed and is not retried (pass a path,
  a list, or an iterable that starts over).
- Lists that page by cursor are iterators (`iter_examples`, `iter_datasets`): pages are fetched as the
  loop reaches them.
- `import_examples` streams a file or any iterable of dicts / JSON lines as NDJSON, calling
  `progress(lines_sent)` as it goes.

Only pydantic and httpx are imported (the schemas import nothing else): no database, Celery or ML stack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
import orjson
from pydantic import BaseModel

from app.core.schemas import ErrorInfo
from app.datasets.schemas import DatasetList, DatasetOut
from app.examples.schemas import CreateResult, ExampleOut, ExamplePage, ImportResult

M = TypeVar("M", bound=BaseModel)
RETRY_STATUSES = frozenset({503})
CHUNK_LINES = 500


class ApiError(Exception):
    """An error answer from the API, with its machine-readable code and details."""

    status: int = 0

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details
        self.body = body or {}


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class PayloadTooLarge(ApiError):
    pass


class ValidationFailed(ApiError):
    """422: `details` names the field or line of each problem."""


class Unavailable(ApiError):
    """503 after every retry (the API, or a dependency readiness names, is down)."""


_BY_STATUS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
                                         413: PayloadTooLarge, 422: ValidationFailed, 503: Unavailable}


def _error(r: httpx.Response) -> ApiError:
    try:
        body = r.json()
        info = ErrorInfo.model_validate(body["error"])
    except (ValueError, KeyError, TypeError):
        body, info = {}, ErrorInfo(code="http_error", message=r.text[:500] or r.reason_phrase)
    cls = _BY_STATUS.get(r.status_code, ApiError)
    return cls(r.status_code, info.code, info.message, info.details, body)


def _lines(source: str | Path | Iterable[dict[str, Any] | str | bytes]) -> Iterator[bytes]:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            for raw in f:
                raw = raw.rstrip(b"\r\n")
                if raw.strip():
                    yield raw
        return
    for item in source:
        if isinstance(item, dict):
            yield orjson.dumps(item)
        elif isinstance(item, str):
            yield item.encode()
        else:
            yield bytes(item).rstrip(b"\r\n")


class Client:
    def __init__(self, base_url: str, key: str, *, timeout: float | None = 60.0, retries: int = 4,
                 backoff_s: float = 0.5, transport: httpx.BaseTransport | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}", **(headers or {})})
        self.retries, self.backoff_s = retries, backoff_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, retry: bool = True,
                 body: Callable[[], Iterator[bytes]] | None = None, **kw: Any) -> httpx.Response:
        """`body` makes the streamed request body afresh for each attempt."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                r = self._http.request(method, path, **({**kw, "content": body()} if body else kw))
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectTimeout):
                if last:
                    raise
            else:
                if r.status_code not in RETRY_STATUSES or last:
                    if r.status_code >= 400:
                        raise _error(r)
                    return r
            time.sleep(self.backoff_s * (2 ** attempt))
        raise AssertionError("unreachable")

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        r = self._request("GET", path, params={k: v for k, v in params.items() if v is not None})
        return model.model_validate(r.json())

    # -- datasets ---------------------------------------------------------------------------------------

    def create_dataset(self, name: str, *, format: str, **policies: Any) -> DatasetOut:
        # Not retried: a create that reached the server before the connection broke would answer 409.
        r = self._request("POST", "/v1/datasets", json={"name": name, "format": format, **policies}, retry=False)
        return DatasetOut.model_validate(r.json())

    def get_dataset(self, ref: str) -> DatasetOut:
        return self._get(f"/v1/datasets/{ref}", DatasetOut)

    def list_datasets(self) -> list[DatasetOut]:
        return self._get("/v1/datasets", DatasetList).items

    # -- examples ---------------------------------------------------------------------------------------

    def import_examples(self, dataset: str, source: str | Path | Iterable[dict[str, Any] | str | bytes], *,
                        source_name: str | None = None, license: str | None = None,
                        legal_basis: str | None = None, atomic: bool = False,
                        progress: Callable[[int], None] | None = None) -> ImportResult:
        """Stream JSON lines (a file path, or an iterable of dicts, strings or bytes) to the import.
        `progress(n)` is called with the number of lines sent so far, every CHUNK_LINES and at the end."""
        params = {k: v for k, v in {"source": source_name, "license": license, "legal_basis": legal_basis,
                                    "atomic": "true" if atomic else None}.items() if v is not None}
        # An iterator is consumed once; a path or any other iterable (a list, an object whose __iter__
        # starts over) can be sent again.
        replayable = not isinstance(source, Iterator)

        def body() -> Iterator[bytes]:
            sent, buf = 0, []
            for raw in _lines(source):
                buf.append(raw)
                if len(buf) == CHUNK_LINES:
                    sent += len(buf)
                    yield b"\n".join(buf) + b"\n"
                    buf = []
                    if progress:
                        progress(sent)
            if buf:
                sent += len(buf)
                yield b"\n".join(buf) + b"\n"
            if progress:
                progress(sent)

        # Imports are idempotent by source_ref, so a replayable source is retried; a one-shot iterator
        # is consumed by the first attempt and is not.
        r = self._request("POST", f"/v1/datasets/{dataset}/examples:import", params=params, body=body,
                          headers={"Content-Type": "application/x-ndjson"}, retry=replayable, timeout=None)
        return ImportResult.model_validate(r.json())

    def create_examples(self, dataset: str, examples: dict[str, Any] | list[dict[str, Any]]) -> CreateResult:
        r = self._request("POST", f"/v1/datasets/{dataset}/examples", json=examples, retry=False)
        return CreateResult.model_validate(r.json())

    def get_example(self, example_id: str) -> ExampleOut:
        return self._get(f"/v1/examples/{example_id}", ExampleOut)

    def examples_page(self, dataset: str, *, status: str | None = None, source_ref: str | None = None,
                      cursor: str | None = None, limit: int | None = None) -> ExamplePage:
        return self._get(f"/v1/datasets/{dataset}/examples", ExamplePage, status=status, source_ref=source_ref,
                         cursor=cursor, limit=limit)

    def iter_examples(self, dataset: str, *, status: str | None = None, source_ref: str | None = None,
                      page_size: int | None = None) -> Iterator[ExampleOut]:
        cursor = None
        while True:
            page = self.examples_page(dataset, status=status, source_ref=source_ref, cursor=cursor, limit=page_size)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # -- operations -------------------------------------------------------------------------------------

    def verify_audit(self, *, full: bool = False) -> dict[str, Any]:
        return self._request("GET", "/v1/audit/verify", params={"full": "true"} if full else None).json()

    def ready(self) -> dict[str, Any]:
        """GET /readyz without raising on 503 (the answer names the failing checks)."""
        r = self._http.get("/readyz")
        return r.json()
