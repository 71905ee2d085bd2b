"""FastAPI application: routers, error handlers, lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit.router import router as audit_router
from app.core.config import get_settings
from app.core.db import get_engine
from app.core.errors import PedigreeError, RequestRecordMiddleware, internal_error_body
from app.core.logs import RequestIdMiddleware, configure_logging, install_access_log_filter
from app.core.metrics import HttpMetricsMiddleware
from app.core.openapi import install as install_openapi
from app.core.textguard import TextGuardMiddleware
from app.datasets.router import router as datasets_router
from app.dedup.router import router as dedup_router
from app.evaluations.router import router as evaluations_router
from app.examples.router import router as examples_router
from app.governance.router import router as governance_router
from app.keys.grants_router import router as grants_router
from app.keys.router import router as keys_router
from app.keys.throttle import AuthThrottleMiddleware
from app.keys.workspaces_router import router as workspaces_router
from app.lineage.router import router as lineage_router
from app.ops.router import router as ops_router
from app.ops.schemas import Liveness
from app.pii.router import router as pii_router
from app.revalidation.router import router as revalidation_router
from app.review.router import router as review_router
from app.snapshots.router import router as snapshots_router
from app.training.router import router as training_router
from app.wiring import wire

log = logging.getLogger("pedigree")

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "validation_error"}


def _error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}}, status_code=status)


def _field(loc: tuple[Any, ...]) -> str:
    # ("body", "messages", 0, "role") -> "messages[0].role"; the transport prefix says nothing to users.
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or (str(loc[0]) if loc else "$")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PedigreeError)
    async def _domain(_: Request, exc: PedigreeError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _field(tuple(e["loc"])), "code": e["type"], "message": e["msg"]} for e in exc.errors()]
        first = details[0] if details else {"field": "$", "message": "invalid request"}
        return _error(422, "validation_error", f"{first['field']}: {first['message']}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), str(exc.detail))


class CatchAllMiddleware:
    """Turns an unhandled exception into the house 500 body *without* re-raising it.

    Starlette's `exception_handler(Exception)` runs in ServerErrorMiddleware, which sends the answer
    and then re-raises, so uvicorn closes the keep-alive connection after every 500 and a client's
    pool loses a socket per error. Catching here, inside that middleware, ends the request normally.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def _send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception as exc:
            log.exception("unhandled error", exc_info=exc)
            if started:  # half a body is already out: only closing the connection tells the client
                raise
            await JSONResponse(internal_error_body(scope), status_code=500)(scope, receive, send)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()  # fail fast on bad settings before taking traffic
    if settings.is_embedded:
        from app.core.migrate import upgrade_head

        upgrade_head()
    from app.core.db import session_scope
    from app.pii.service import startup_check

    with session_scope() as session:  # a lost vault key stops the API here, not at the first reveal
        startup_check(session)
    from app.examples.jobs import sweep_stale_imports

    sweep_stale_imports()  # imports a previous API process left open are interrupted, not open forever
    yield


def create_app() -> FastAPI:
    wire()
    # The bias report's lexicons: a missing or malformed file refuses start-up, naming it (docs/bias.md).
    from app.snapshots import lexicons

    lexicons.check()
    get_settings().sso.check()  # single sign-on half configured, or a bad group table: refuse to start
    # The interactive docs and the OpenAPI schema are the only pages besides /healthz and the review
    # sign-in that answer without a key, so outside the embedded mode they are off unless asked for.
    settings = get_settings()
    docs = settings.api_docs if settings.api_docs is not None else settings.is_embedded
    app = FastAPI(title="Pedigree", version="0.1.0", lifespan=lifespan,
                  description="Governed training-data curation for LLM fine-tuning.",
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    install_error_handlers(app)
    install_openapi(app)
    # Innermost: a NUL or lone surrogate in a path, query or JSON/form body is a 422 naming the field.
    app.add_middleware(TextGuardMiddleware)
    app.add_middleware(CatchAllMiddleware)
    # Outside the catch-all (added later = further out), so the record exists when it answers.
    app.add_middleware(RequestRecordMiddleware)
    # Outside the handlers and the catch-all, so a throttled address is refused before any key lookup.
    app.add_middleware(AuthThrottleMiddleware)
    if settings.metrics:  # outside the catch-all, so a 500 is timed and counted with its status
        app.add_middleware(HttpMetricsMiddleware)
    # Outermost: every log line of the request, its 500 included, and the tasks it sends carry the id.
    app.add_middleware(RequestIdMiddleware)
    configure_logging(settings.log_format_resolved, settings.log_level)
    install_access_log_filter()  # query values (source refs, tags) never reach the access log
    # Routes are matched in the order included, each request trying every route before its own: the review
    # router comes first because its two hot routes (queue-next, decide) are most of the traffic; behind
    # five other routers their matching cost ~6% of the API's CPU on the review path. No path of one
    # router matches a route of another with the same method, so the order decides nothing else.
    for r in (review_router, datasets_router, examples_router, audit_router, keys_router, pii_router, snapshots_router,
              dedup_router, training_router, evaluations_router, governance_router):
        app.include_router(r)
    app.include_router(grants_router)
    app.include_router(workspaces_router)
    app.include_router(lineage_router)
    app.include_router(revalidation_router)
    app.include_router(ops_router)

    @app.get("/healthz", tags=["ops"], response_model=Liveness)
    def healthz() -> dict[str, Any]:
        # The one unauthenticated endpoint: load balancers probe it. It reveals nothing but liveness.
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"ok": True}

    return app


app = create_app()
