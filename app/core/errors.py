"""Domain errors. Services raise these; one handler in app.main turns them into
`{"error": {"code", "message", "details"}}` with the right status. No HTTPException in services."""

from __future__ import annotations

from typing import Any


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
