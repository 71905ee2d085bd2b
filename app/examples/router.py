from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.core.auth import Curator, Reader
from app.core.config import get_settings
from app.core.db import SessionDep, session_factory, session_scope
from app.core.errors import NotFound, PayloadTooLarge, ValidationFailed, note_batch_id
from app.datasets import service as datasets
from app.examples import ingest
from app.examples import service as examples
from app.examples.formats import FieldError
from app.models.dataset import Dataset
from app.models.example import IngestBatch

log = logging.getLogger(__name__)
router = APIRouter(tags=["examples"])

MAX_JSON_BODY = 32 * 1024 * 1024


@router.get("/v1/datasets/{dataset_ref}/examples")
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


@router.get("/v1/examples/{example_id}")
def get_example(example_id: str, session: SessionDep, actor: Reader) -> dict[str, Any]:
    return examples.view(session, examples.get(session, example_id), actor)


@router.post("/v1/datasets/{dataset_ref}/examples", status_code=201)
async def create_examples(dataset_ref: str, request: Request, actor: Curator) -> dict[str, Any]:
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
    defaults = ingest.Defaults(source=request.query_params.get("source"), license=request.query_params.get("license"),
                               legal_basis=request.query_params.get("legal_basis"))

    def work() -> dict[str, Any]:
        with session_scope() as session:
            ds = datasets.get(session, dataset_ref)
            candidates, errors = [], []
            for i, obj in enumerate(items):
                try:
                    candidates.append(ingest.prepare(ds.format, obj, i + 1, defaults))
                except FieldError as fe:
                    errors.append({"index": i, "line": i + 1, "field": fe.field, "code": fe.code, "message": fe.message})
            if errors:
                raise ValidationFailed(f"{len(errors)} of {len(items)} examples are invalid; nothing was stored",
                                       details=errors[:ingest.MAX_STORED_ERRORS])
            batch = ingest.open_batch(session, dataset=ds, actor=actor, channel="api", atomic=True, defaults=defaults)
            out = ingest.store(session, dataset=ds, batch_id=batch.id, actor=actor, candidates=candidates, want_items=True)
            if out.errors:
                raise ValidationFailed(f"{len(out.errors)} examples conflict with stored ones; nothing was stored",
                                       code="conflict", details=[e.to_dict() for e in out.errors])
            ingest.finish_batch(session, batch, accepted=out.accepted, rejected=0, unchanged=out.unchanged,
                                exact_duplicates=out.exact_duplicates, errors=[])
            return {"batch_id": str(batch.id), "accepted": out.accepted, "rejected": 0, "unchanged": out.unchanged,
                    "exact_duplicates": out.exact_duplicates, "errors": [], "items": out.items}

    # One transaction for the whole body: a race with a concurrent import of the same refs rolls it
    # back whole, and the retry sees the winner's rows.
    return await run_in_threadpool(ingest.with_retries, work, "create examples")


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes; use examples:import for bulk JSONL")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/datasets/{dataset_ref}/examples:import")
async def import_examples(
    dataset_ref: str,
    request: Request,
    actor: Curator,
    auth_session: SessionDep,
    source: str | None = None,
    license: str | None = None,
    legal_basis: str | None = None,
    atomic: bool = False,
) -> JSONResponse:
    """Stream JSONL of any size. Each batch of lines is validated and stored in its own transaction
    (or all in one with atomic=true); memory stays flat however large the file is."""
    # The key lookup's session is the request's; left open it would hold a pooled connection, idle
    # in a transaction, for the whole stream (20 concurrent imports then exhausted the pool).
    auth_session.close()
    settings = get_settings()
    defaults = ingest.Defaults(source=source, license=license, legal_basis=legal_basis)
    batch_size = settings.ingest_batch_size
    # Non-atomic: every batch of lines commits on its own with the batch row's counts, so valid lines
    # are kept and the row is true after any crash. atomic=true: one session, one transaction across
    # the whole stream (used by one thread at a time), counted in `totals`/`errors` here.
    progress = ingest.Progress()
    totals = {"accepted": 0, "unchanged": 0, "exact_duplicates": 0, "rejected": 0}
    errors: list[ingest.LineError] = []
    atomic_session = session_factory()() if atomic else None

    def setup() -> tuple[Dataset, IngestBatch]:
        if atomic_session is not None:
            ds = datasets.get(atomic_session, dataset_ref)
            return ds, ingest.open_batch(atomic_session, dataset=ds, actor=actor, channel="import",
                                         atomic=True, defaults=defaults)
        with session_scope() as s:
            ds = datasets.get(s, dataset_ref)
            return ds, ingest.open_batch(s, dataset=ds, actor=actor, channel="import", atomic=False,
                                         defaults=defaults)

    def validate(ds: Dataset, lines: list[tuple[int, bytes | ingest.TooLarge]]
                 ) -> tuple[list[ingest.Candidate], list[ingest.LineError]]:
        candidates, bad = [], []
        for line_no, raw in lines:
            r = ingest.parse_line(raw, line_no, ds.format, defaults)
            (bad if isinstance(r, ingest.LineError) else candidates).append(r)
        return candidates, bad

    def write(ds: Dataset, batch_id: uuid.UUID, candidates: list[ingest.Candidate],
              bad: list[ingest.LineError], last_line: int) -> None:
        if atomic_session is None:
            ingest.store_batch(dataset=ds, batch_id=batch_id, actor=actor, candidates=candidates,
                               line_errors=bad, last_line=last_line, progress=progress)
            return
        errors.extend(bad)
        if errors:  # nothing will be kept: skip the writes but keep validating every line
            return
        out = ingest.store(atomic_session, dataset=ds, batch_id=batch_id, actor=actor, candidates=candidates)
        errors.extend(out.errors)
        totals["accepted"] += out.accepted
        totals["unchanged"] += out.unchanged
        totals["exact_duplicates"] += out.exact_duplicates

    def finish(batch_id: uuid.UUID, last_line: int) -> None:
        if atomic_session is None:
            with session_scope() as s:
                b = s.get(IngestBatch, batch_id)
                ingest.finish_batch(s, b, errors=progress.errors, status="completed", lines_committed=last_line,
                                    **progress.totals())
            return
        errors.sort(key=lambda e: e.line)
        totals["rejected"] = len(errors)
        if errors:
            atomic_session.rollback()
            atomic_session.close()
            # The attempt itself is kept (as a failed batch, nothing in it) for the audit trail.
            with session_scope() as s:
                ds = datasets.get(s, dataset_ref)
                b = ingest.open_batch(s, dataset=ds, actor=actor, channel="import", atomic=True,
                                      defaults=defaults)
                ingest.finish_batch(s, b, accepted=0, rejected=len(errors), unchanged=0, exact_duplicates=0,
                                    errors=errors, status="failed")
                totals["batch_id"] = b.id
            return
        b = atomic_session.get(IngestBatch, batch_id)
        ingest.finish_batch(atomic_session, b, errors=errors, status="completed", lines_committed=last_line,
                            **_counts(totals))
        atomic_session.commit()
        atomic_session.close()

    batch: IngestBatch | None = None
    try:
        ds, batch = await run_in_threadpool(setup)
        note_batch_id(batch.id)
        parser = ingest.LineParser(limit=settings.max_example_bytes)
        pending: list[tuple[int, bytes | ingest.TooLarge]] = []
        # Two-stage pipeline: batch k is written to the database (waiting on I/O, GIL released)
        # while batch k+1 is parsed and validated. Writes stay in order, one at a time.
        writing: asyncio.Future | None = None

        async def submit(lines: list[tuple[int, bytes | ingest.TooLarge]], last_line: int) -> None:
            nonlocal writing
            candidates, bad = await run_in_threadpool(validate, ds, lines)
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(run_in_threadpool(write, ds, batch.id, candidates, bad, last_line))

        async for chunk in request.stream():
            pending.extend(parser.feed(chunk))
            # Cut at batch_size even when one chunk carried more lines: a transaction (and what a
            # crash can leave half-done) stays one batch.
            while len(pending) >= batch_size:
                cut, pending = pending[:batch_size], pending[batch_size:]
                await submit(cut, pending[0][0] - 1 if pending else parser.line_no)
        pending.extend(parser.close())
        if pending:
            await submit(pending, parser.line_no)
        if writing is not None:
            await writing
        await run_in_threadpool(finish, batch.id, parser.line_no)
    except BaseException:
        if atomic_session is not None:
            atomic_session.rollback()
            atomic_session.close()
        elif batch is not None:
            await _mark_interrupted(batch.id)
        raise

    if atomic_session is None:
        counts, shown, rejected = progress.totals(), progress.errors, progress.rejected
        batch_id = batch.id
    else:
        batch_id = totals.pop("batch_id", batch.id)
        counts, shown, rejected = totals, errors[:ingest.MAX_STORED_ERRORS], len(errors)
    body: dict[str, Any] = {
        "batch_id": str(batch_id), **counts, "errors": [e.to_dict() for e in shown],
        "errors_truncated": rejected > len(shown),
    }
    if atomic and errors:
        body.update(accepted=0, unchanged=0, exact_duplicates=0)
        body["error"] = {"code": "validation_error",
                         "message": f"{len(errors)} lines are invalid; atomic import stored nothing",
                         "details": body["errors"]}
        return JSONResponse(body, status_code=422)
    if counts["accepted"] == 0 and counts["unchanged"] == 0 and rejected:
        body["error"] = {"code": "validation_error", "message": "no line of the body is a valid example",
                         "details": body["errors"]}
        return JSONResponse(body, status_code=422)
    return JSONResponse(body, status_code=200)


async def _mark_interrupted(batch_id: uuid.UUID) -> None:
    # Best effort: with the database gone this fails too, and the stale-import sweep marks it later.
    try:
        await run_in_threadpool(ingest.mark_interrupted, batch_id)
    except Exception:
        log.warning("could not mark import batch %s interrupted; the sweeper will", batch_id, exc_info=True)


@router.get("/v1/ingest-batches/{batch_id}")
def get_batch(batch_id: str, session: SessionDep, actor: Reader) -> dict[str, Any]:
    try:
        b = session.get(IngestBatch, uuid.UUID(batch_id))
    except ValueError:
        b = None
    if b is None:
        raise NotFound(f"ingest batch {batch_id} not found")
    return {"id": str(b.id), "dataset_id": str(b.dataset_id), "created_by": b.created_by, "channel": b.channel,
            "atomic": b.atomic, "status": b.status, "accepted": b.accepted, "rejected": b.rejected,
            "unchanged": b.unchanged, "exact_duplicates": b.exact_duplicates, "errors": b.errors,
            # Every line up to this number is stored or listed in errors: a re-send of the lines after
            # it completes an interrupted import (and a re-send of the whole file is idempotent by source_ref).
            "lines_committed": b.lines_committed,
            "last_seen": b.last_seen.isoformat() if b.last_seen else None,
            "created_at": b.created_at.isoformat(), "finished_at": b.finished_at.isoformat() if b.finished_at else None}


def _counts(totals: dict[str, Any]) -> dict[str, int]:
    return {k: totals[k] for k in ("accepted", "rejected", "unchanged", "exact_duplicates")}
