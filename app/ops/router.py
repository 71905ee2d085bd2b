"""GET /readyz (no key: orchestrators probe it) and GET /metrics (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.core.auth import Admin
from app.core.config import get_settings
from app.core.errors import NotFound
from app.core.openapi import errors
from app.core.schemas import Error
from app.ops import metrics, readiness
from app.ops.schemas import Readiness, validate

router = APIRouter(tags=["ops"])


# The 503 is an Error body (code not_ready, `details` one entry per failing check) that also carries the
# same `ok`, `checks` and `failing` as the 200, so a probe reads one shape either way.
@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Error, "description": "Not ready: `error.details` and `failing` name "
                                                            "the failing checks; `checks` as on 200"}})
async def readyz() -> Any:
    # Liveness is /healthz; this says whether the dependencies this process needs answer now.
    body = validate(await run_in_threadpool(readiness.readiness))
    return JSONResponse(body, status_code=200 if body["ok"] else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format 0.0.4",
                             "content": {metrics.CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
                       **errors(404)})
def prometheus_metrics(_: Admin) -> Response:
    # Behind the admin key: series name datasets' stages and queue depths, and an unauthenticated
    # scrape target is one more thing to firewall. Prometheus sends the key (`authorization:
    # credentials_file:` in its scrape config, docs/operations.md).
    if not get_settings().metrics:
        raise NotFound("metrics are off (PEDIGREE_METRICS=false)", code="metrics_off")
    return Response(metrics.scrape(), media_type=metrics.CONTENT_TYPE)
