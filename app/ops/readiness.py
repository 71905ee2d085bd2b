"""Readiness: can this process serve its work now? Liveness (`/healthz`) only says it is running.

Each check is named in the answer, so a failing probe says which dependency is down: the database, Redis
(where configured: the broker and the LSH index), the schema (migrations at the code's head: an API
started before `alembic upgrade head` finished would fail on new columns) and the vault key (every key id
in the vault must be in PEDIGREE_PII_VAULT_KEYS, or reveals and erasures fail).

The answer names each failing check and the error's type, never its message: the endpoint answers
without a key, and a driver's message can name hosts and users. The message goes to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy import text

from app.core.config import get_settings
from app.core.db import get_engine, session_scope

log = logging.getLogger(__name__)

# A probe must answer well inside the orchestrator's probe timeout, even when Redis blackholes packets.
REDIS_TIMEOUT_S = 2.0


@lru_cache
def code_heads() -> tuple[str, ...]:
    """The migration heads this code expects (the scripts do not change under a running process)."""
    from alembic.script import ScriptDirectory

    from app.core.migrate import alembic_config

    return tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def check_database() -> dict[str, Any]:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"ok": True}


def check_migrations() -> dict[str, Any]:
    from alembic.runtime.migration import MigrationContext

    with get_engine().connect() as conn:
        current = tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
    heads = code_heads()
    return {"ok": current == heads, "current": list(current), "head": list(heads)}


@lru_cache
def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)


def check_redis() -> dict[str, Any]:
    url = get_settings().redis_url
    if not url:
        return {"ok": True, "configured": False}
    _redis(url).ping()
    return {"ok": True, "configured": True}


# The vault check reads the distinct key ids of the vault (an index scan that grows with the vault); a
# pass is remembered this long, so a probe every few seconds does not rescan it each time. A key ring
# only changes with a restart, and a key id unknown to this ring can only come from another process.
VAULT_OK_TTL_S = 60.0
_vault_ok_until = 0.0


def check_vault() -> dict[str, Any]:
    global _vault_ok_until
    from app.pii.service import startup_check

    if time.monotonic() < _vault_ok_until:
        return {"ok": True, "cached": True}
    with session_scope() as session:
        startup_check(session)
    _vault_ok_until = time.monotonic() + VAULT_OK_TTL_S
    return {"ok": True}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "redis": check_redis,
    "migrations": check_migrations,
    "vault": check_vault,
}


def readiness() -> dict[str, Any]:
    """{"ok", "checks": {name: {"ok", ...}}}; a check that raises is failed with its error's type. The
    schema and vault checks need the database: when it is down they are skipped, named as such."""
    checks: dict[str, dict[str, Any]] = {}
    for name, fn in CHECKS.items():
        if name in ("migrations", "vault") and not checks["database"]["ok"]:
            checks[name] = {"ok": False, "error": "skipped: database unavailable"}
            continue
        start = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency is "not ready", never a 500
            log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            res = {"ok": False, "error": type(exc).__name__}
        res["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
        checks[name] = res
    failing = [n for n, c in checks.items() if not c["ok"]]
    out: dict[str, Any] = {"ok": not failing, "checks": checks}
    if failing:
        out["failing"] = failing
        out["error"] = {"code": "not_ready", "message": f"not ready: {', '.join(failing)}",
                        "details": [{"check": n, **checks[n]} for n in failing]}
    return out
