"""The liveness and readiness answers (GET /healthz; GET /readyz, 200 and 503 alike)."""

from __future__ import annotations

from typing import Any

from app.core.schemas import ErrorInfo, Out


class Check(Out):
    ok: bool
    duration_ms: float | None = None
    # A failing check: its error's type (never the message), or "skipped: database unavailable".
    error: str | None = None
    # redis: whether PEDIGREE_REDIS_URL is set (unset: nothing to check, ok).
    configured: bool | None = None
    # migrations: the database's revisions and the code's heads.
    current: list[str] | None = None
    head: list[str] | None = None
    # vault: a pass remembered from the last minute.
    cached: bool | None = None


class Readiness(Out):
    ok: bool
    checks: dict[str, Check]
    # On 503: the failing checks' names, and the same as an Error body's `error` (code not_ready).
    failing: list[str] | None = None
    error: ErrorInfo | None = None


def validate(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the model serialises it (undeclared fields fail in the test suite)."""
    return Readiness.model_validate(body).model_dump(mode="json")


class Liveness(Out):
    """GET /healthz: the process answers and reaches its database."""

    ok: bool
