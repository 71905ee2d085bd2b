"""Domain errors. Services raise these; one handler in app.main turns them into
`{"error": {"code", "message", "details"}}` with the right status. No HTTPException in services.
Also the request record behind the 500 body (what a failed request had committed)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


class PedigreeError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class Unauthorized(PedigreeError):
    status_code = 401
    code = "unauthorized"


class Forbidden(PedigreeError):
    status_code = 403
    code = "forbidden"


class NotFound(PedigreeError):
    status_code = 404
    code = "not_found"


class Conflict(PedigreeError):
    status_code = 409
    code = "conflict"


class InvalidState(Conflict):
    code = "invalid_state"


class ValidationFailed(PedigreeError):
    """422. `details` is a list of {"field" | "line", "code", "message"} so a client can point at it."""

    status_code = 422
    code = "validation_error"


class PayloadTooLarge(PedigreeError):
    status_code = 413
    code = "payload_too_large"


class NotWired(RuntimeError):
    """An extension point (stages, view hooks, in-process handlers) was read before the process's entry
    point called `app.wiring.wire()`. A programming error, never a 4xx: it is not mapped to HTTP."""


# What a request did before it failed, so the 500 body says no more than is true. A commit that was
# sent to the database may have happened even if the request then failed (a connection lost during
# COMMIT is indistinguishable from one lost after it), so "changed nothing" is claimed only when no
# COMMIT was issued while the request ran. The record is a mutable object in a contextvar: sync
# endpoints run in a thread with a copy of the request's context, and the copy points at the same
# object, so what they note is seen by the error handler.
@dataclass
class RequestRecord:
    commit_sent: bool = False
    batch_id: str | None = None


_record: ContextVar[RequestRecord | None] = ContextVar("pedigree_request_record", default=None)
_SCOPE_KEY = "pedigree.request_record"


class RequestRecordMiddleware:
    """Pure ASGI (a BaseHTTPMiddleware would run the endpoint in another task and lose the context).
    The record is also put in the ASGI scope: the 500 handler runs in Starlette's outermost
    middleware, after this one has returned."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rec = RequestRecord()
        scope[_SCOPE_KEY] = rec
        token = _record.set(rec)
        try:
            await self.app(scope, receive, send)
        finally:
            _record.reset(token)


def note_commit() -> None:
    rec = _record.get()
    if rec is not None:
        rec.commit_sent = True


def note_batch_id(batch_id: Any) -> None:
    """Called by a route once it has committed an ingest batch row, so its 500 can point at it."""
    rec = _record.get()
    if rec is not None:
        rec.batch_id = str(batch_id)


def internal_error_body(scope: dict) -> dict[str, Any]:
    rec: RequestRecord | None = scope.get(_SCOPE_KEY)
    if rec is None or not rec.commit_sent:
        return {"error": {"code": "internal_error", "message": "internal error; the request changed nothing",
                          "details": None}}
    details: dict[str, Any] = {"committed": "partly"}
    message = "internal error after part of the request was committed; what was committed is kept"
    if rec.batch_id is not None:
        details["batch_id"] = rec.batch_id
        message += f"; GET /v1/ingest-batches/{rec.batch_id} lists what was stored, and a re-send is idempotent"
    return {"error": {"code": "internal_error", "message": message, "details": details}}


@event.listens_for(Engine, "commit")
def _commit_issued(_conn: Any) -> None:
    # Fires before the DBAPI COMMIT: from here on the outcome may be "committed".
    note_commit()
