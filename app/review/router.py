from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.core.auth import REVIEWER, Judge, Reader, Reviewer, bearer_token
from app.core.db import SessionDep, session_scope
from app.core.errors import Unauthorized
from app.core.openapi import BEARER, errors
from app.datasets import service as datasets
from app.examples.schemas import SuggestionOut
from app.review import decisions, edits, pairwise, web
from app.review import queue as review_queue
from app.review import stats as review_stats
from app.review.jobs import committer
from app.review.schemas import (
    BulkResult,
    BulkReviewIn,
    LeaseReleased,
    LeaseRenewed,
    PairwiseIn,
    PairwiseResult,
    ReviewCreated,
    ReviewIn,
    ReviewQueue,
    ReviewStats,
    RevisionCreated,
    RevisionIn,
    SuggestionIn,
)

router = APIRouter(tags=["review"])


def _json(body: Any, status: int = 200) -> Response:
    # The two hot endpoints skip FastAPI's generic encoder: their bodies are already plain JSON
    # types, and orjson is several times faster on example content.
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


# The two hot routes read the key themselves (BEARER says so in the document) and send orjson bytes:
# their models document the body, FastAPI does not re-validate it.
@router.get("/v1/review/queue", response_model=ReviewQueue, openapi_extra=BEARER, responses=errors(403, 404))
async def queue(request: Request, dataset: str, limit: Annotated[int, Query(ge=1, le=50)] = 1,
                view: Literal["compact", "full"] = "compact") -> Response:
    """Compact items carry the revision's content and quality flags; `view=full` adds the whole
    example view (PII findings, duplicates, review state, suggestions) at a few queries per item."""
    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")

    # One worker-thread hop for the whole request, authentication included: through the dependency
    # chain (session, key, role, teardown) it took four, and under load the hand-offs cost more CPU
    # than the queries.
    def work() -> list[dict[str, Any]]:
        with session_scope() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Each statement its own transaction: the key-and-dataset read and the pick-and-lease
                # are single statements, atomic by themselves, and nothing here writes an audit event,
                # so BEGIN and COMMIT were two round trips (of four) that bought nothing.
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            actor, ds, own = review_queue.queue_context(session, token, dataset, *REVIEWER)
            request.state.actor = actor
            if view == "full":
                ds = datasets.get(session, dataset)
            return review_queue.next_items(session, dataset=ds, actor=actor, limit=limit,
                                           with_view=view == "full", own_leases=own)

    return _json({"items": await run_in_threadpool(work)})


@router.post("/v1/review/leases/{example_id}/renew", response_model=LeaseRenewed, responses=errors(409))
def renew(example_id: str, session: SessionDep, actor: Reviewer) -> dict[str, Any]:
    return review_queue.renew_lease(session, example_id=example_id, actor=actor)


@router.delete("/v1/review/leases/{example_id}", response_model=LeaseReleased, responses=errors(409))
def release(example_id: str, session: SessionDep, actor: Reviewer) -> dict[str, Any]:
    return review_queue.release_lease(session, example_id=example_id, actor=actor)


@router.post("/v1/examples/{example_id}/reviews", status_code=201, response_model=ReviewCreated, openapi_extra=BEARER,
             responses=errors(403, 404, 409))
async def review(example_id: str, data: ReviewIn, request: Request) -> Response:
    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    # Authenticated and committed by the group committer, in one transaction with the other
    # decisions that arrived meanwhile (see jobs.py for why).
    return _json(await committer.decide(example_id=example_id, data=data, token=token), 201)


@router.post("/v1/examples/{example_id}/comparisons", status_code=201, response_model=PairwiseResult,
             responses=errors(403, 404, 409))
def compare(example_id: str, data: PairwiseIn, session: SessionDep, actor: Reviewer) -> dict[str, Any]:
    """A pairwise pick on a preference example (docs/review.md): `a`/`b` as the caller's queue item showed
    them, `tie` or `both_bad`, with a reason code. It approves the revision under the review policy (same
    refusals as a decision: 409 `leased`, 403 `four_eyes`, ...); the pick that completes the policy
    settles the verdict."""
    return pairwise.compare(session, example_id=example_id, actor=actor, data=data)


@router.post("/v1/reviews:bulk", response_model=BulkResult, responses=errors(404, 409))
def review_bulk(data: BulkReviewIn, session: SessionDep, actor: Reviewer) -> dict[str, Any]:
    return decisions.decide_bulk(session, actor=actor, data=data)


@router.post("/v1/examples/{example_id}/revisions", status_code=201, response_model=RevisionCreated,
             responses=errors(409))
def revise(example_id: str, data: RevisionIn, session: SessionDep, actor: Judge) -> dict[str, Any]:
    return edits.edit(session, example_id=example_id, actor=actor, data=data)


@router.post("/v1/examples/{example_id}/suggestions", status_code=201, response_model=SuggestionOut,
             responses=errors(409))
def suggest(example_id: str, data: SuggestionIn, session: SessionDep, actor: Judge) -> dict[str, Any]:
    return edits.add_suggestion(session, example_id=example_id, actor=actor, data=data)


@router.get("/v1/review/stats", response_model=ReviewStats, responses=errors(404))
def stats(session: SessionDep, actor: Reader, dataset: str) -> dict[str, Any]:
    return review_stats.stats(session, dataset=datasets.get(session, dataset))


# The reviewer page lives under /review; it shares the services above but authenticates by cookie.
router.include_router(web.router)
