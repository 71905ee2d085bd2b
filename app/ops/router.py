"""GET /readyz (no key: orchestrators probe it) and GET /metrics (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.core.auth import Admin
from app.core.config import get_settings
from app.core.errors import NotFound
from app.ops import metrics, readiness

router = APIRouter(tags=["ops"])


@router.get("/readyz")
async def readyz() -> Any:
    # Liveness is /healthz; this says whether the dependencies this process needs answer now.
    body = await run_in_threadpool(readiness.readiness)
    return JSONResponse(body, status_code=200 if body["ok"] else 503)


@router.get("/metrics")
def prometheus_metrics(_: Admin) -> Response:
    # Behind the admin key: series name datasets' stages and queue depths, and an unauthenticated
    # scrape target is one more thing to firewall. Prometheus sends the key (`authorization:
    # credentials_file:` in its scrape config, docs/operations.md).
    if not get_settings().metrics:
        raise NotFound("metrics are off (PEDIGREE_METRICS=false)", code="metrics_off")
    return Response(metrics.scrape(), media_type=metrics.CONTENT_TYPE)
