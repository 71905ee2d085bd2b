from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.core.auth import Curator, Reader
from app.core.config import get_settings
from app.core.db import SessionDep
from app.core.errors import NotFound, PayloadTooLarge, ValidationFailed
from app.core.openapi import errors, request_body
from app.datasets import service as datasets
from app.examples import importer
from app.examples import service as examples
from app.examples.parsing import Defaults
from app.examples.schemas import (
    CreateResult,
    ExampleIn,
    ExampleOut,
    ExamplePage,
    ImportResult,
    IngestBatchOut,
    PreferenceShape,
)
from app.models.example import IngestBatch

router = APIRouter(tags=["examples"])

MAX_JSON_BODY = 32 * 1024 * 1024


@router.get("/v1/datasets/{dataset_ref}/examples", response_model=ExamplePage)
def list_examples(
    dataset_ref: str,
    session: SessionDep,
    actor: Reader,
    status: str | None = None,
    source_ref: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    ds = datasets.get(session, dataset_ref)
    rows, nxt = examples.list_page(session, dataset_id=ds.id, status=status, source_ref=source_ref,
                                   cursor=cursor, limit=limit)
    return {"items": [examples.view(session, ex, actor) for ex in rows], "next_cursor": nxt}


@router.get("/v1/examples/{example_id}", response_model=ExampleOut)
def get_example(example_id: str, session: SessionDep, actor: Reader) -> dict[str, Any]:
    return examples.view(session, examples.get(session, example_id), actor)


# The two ingest routes read their bodies themselves (in bounded pieces), so their bodies are declared here.
_DEFAULTS = "; the query's `source`, `license` and `legal_basis` fill what an example's provenance leaves out"
_CREATE_BODY = request_body({"application/json": ExampleIn | list[ExampleIn]},
                            description="one example object of the dataset's format, or an array of them" + _DEFAULTS)
_IMPORT_BODY = request_body({
    # A byte stream (`format: binary`), so generated clients upload a file or stream instead of one string.
    "application/x-ndjson": {"type": "string", "format": "binary",
                             "description": "JSON Lines (UTF-8): one example object per line (the shape of "
                                            "the application/json body); line numbers count from 1"},
    "application/json": ExampleIn,
}, description="JSONL of any size, streamed (a single example object on one line is a one-line body)" + _DEFAULTS)


@router.post("/v1/datasets/{dataset_ref}/examples", status_code=201, response_model=CreateResult,
             openapi_extra=_CREATE_BODY, responses=errors(413))
async def create_examples(dataset_ref: str, request: Request, actor: Curator, source: str | None = None,
                          license: str | None = None, legal_basis: str | None = None,
                          shape: PreferenceShape | None = None) -> dict[str, Any]:
    """One example object or an array of them. All-or-nothing: a 422 names the index and field."""
    body = await _read_limited(request, MAX_JSON_BODY)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValidationFailed(f"body is not valid JSON: {e}", code="invalid_json",
                               details=[{"field": "$", "code": "invalid_json", "message": str(e)}]) from None
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ValidationFailed("no examples in the body", details=[{"field": "$", "code": "empty", "message": "empty array"}])
    defaults = Defaults(source=source, license=license, legal_basis=legal_basis, shape=shape)
    return await run_in_threadpool(importer.store_objects, dataset_ref=dataset_ref, items=items, actor=actor,
                                   defaults=defaults)


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes; use examples:import for bulk JSONL")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/datasets/{dataset_ref}/examples:import", response_model=ImportResult, openapi_extra=_IMPORT_BODY,
             responses={422: {"description": "No line is a valid example (or, atomic, any line is not): the "
                                             "Error body also carries the ImportResult fields"}})
async def import_examples(
    dataset_ref: str,
    request: Request,
    actor: Curator,
    auth_session: SessionDep,
    source: str | None = None,
    license: str | None = None,
    legal_basis: str | None = None,
    atomic: bool = False,
    shape: Annotated[PreferenceShape | None, Query(
        description="preference datasets: the line shape (openai, trl, hh, oasst); without it each line's "
                    "shape is detected from its keys")] = None,
) -> JSONResponse:
    """Stream JSONL of any size. Each batch of lines is validated and stored in its own transaction
    (or all in one with atomic=true); memory stays flat however large the file is."""
    # The key lookup's session is the request's; left open it would hold a pooled connection, idle
    # in a transaction, for the whole stream (20 concurrent imports then exhausted the pool).
    auth_session.close()
    settings = get_settings()
    kind = importer.AtomicImport if atomic else importer.StreamedImport
    imp = kind(dataset_ref=dataset_ref, actor=actor, defaults=Defaults(source=source, license=license,
                                                                       legal_basis=legal_basis, shape=shape))
    status, body = await imp.run(request.stream(), batch_size=settings.ingest_batch_size,
                                 line_limit=settings.max_example_bytes)
    return JSONResponse(body, status_code=status)


@router.get("/v1/ingest-batches/{batch_id}", response_model=IngestBatchOut)
def get_batch(batch_id: str, session: SessionDep, actor: Reader) -> dict[str, Any]:
    try:
        b = session.get(IngestBatch, uuid.UUID(batch_id))
    except ValueError:
        b = None
    missing = NotFound(f"ingest batch {batch_id} not found")
    if b is None:
        raise missing
    datasets.check_dataset_id(session, b.dataset_id, missing)
    return {"id": str(b.id), "dataset_id": str(b.dataset_id), "created_by": b.created_by, "channel": b.channel,
            "atomic": b.atomic, "status": b.status, "accepted": b.accepted, "rejected": b.rejected,
            "unchanged": b.unchanged, "exact_duplicates": b.exact_duplicates, "errors": b.errors,
            # Every line up to this number is stored or listed in errors: a re-send of the lines after
            # it completes an interrupted import (and a re-send of the whole file is idempotent by source_ref).
            "lines_committed": b.lines_committed,
            "last_seen": b.last_seen.isoformat() if b.last_seen else None,
            "created_at": b.created_at.isoformat(), "finished_at": b.finished_at.isoformat() if b.finished_at else None}

