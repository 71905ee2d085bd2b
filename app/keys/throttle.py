"""Failed-authentication throttling.

Every 401 answer counts against the client's address; past `auth_failure_limit` refusals within
`auth_failure_window_s` the address gets 429 (`too_many_failures`, `Retry-After`) on *every* request,
valid key or not, until the window ends: an attacker guessing keys learns nothing from a right guess
while throttled. The counter is in Redis when the API has one (shared by every API process behind the
load balancer), in this process's memory in the embedded mode. Fixed windows: one INCR per failure,
one GET per request.

Crossing the limit is one audit event (`auth.throttled`, the address and the count), once per window
and address, so a flood of bad keys cannot flood the chain; every refusal is counted in
`pedigree_auth_throttled_total`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import service as audit
from app.core import metrics
from app.core.config import get_settings
from app.core.db import session_scope

log = logging.getLogger(__name__)
# Paths that authenticate: the API and the reviewer page. /healthz, /readyz and /metrics' scrape by
# a monitoring system are left alone (a throttled address must still be probeable by its balancer).
GUARDED = ("/v1/", "/review")
REDIS_PREFIX = "pedigree:authfail:"


class LocalCounter:
    """One process's fixed-window counters (the embedded mode: one process serves everything)."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str, limit: int) -> float:
        n, end = self._windows.get(client, (0, 0.0))
        now = time.monotonic()
        return end - now if n > limit and end > now else 0.0

    def failed(self, client: str, window_s: float) -> int:
        now = time.monotonic()
        with self._lock:
            n, end = self._windows.get(client, (0, 0.0))
            if end <= now:
                n, end = 0, now + window_s
                if len(self._windows) > 100_000:  # spoofed spreads of addresses must not grow this forever
                    self._windows = {k: v for k, v in self._windows.items() if v[1] > now}
            self._windows[client] = (n + 1, end)
            return n + 1

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


class RedisCounter:
    def __init__(self, url: str) -> None:
        import redis

        # Short timeouts: the check is on every request; a slow Redis must not become a slow API.
        self._r = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)

    def retry_after(self, client: str, limit: int) -> float:
        n = self._r.get(REDIS_PREFIX + client)
        if n is None or int(n) <= limit:
            return 0.0
        ttl = self._r.pttl(REDIS_PREFIX + client)
        return max(ttl, 0) / 1000.0

    def failed(self, client: str, window_s: float) -> int:
        key = REDIS_PREFIX + client
        pipe = self._r.pipeline()
        pipe.incr(key)
        pipe.pexpire(key, int(window_s * 1000), nx=True)  # the window starts at the first failure
        n, _ = pipe.execute()
        return int(n)

    def reset(self) -> None:
        for key in self._r.scan_iter(REDIS_PREFIX + "*"):
            self._r.delete(key)


_LOCAL = LocalCounter()


@functools.lru_cache(maxsize=4)
def _redis_counter(url: str) -> RedisCounter:
    return RedisCounter(url)


def counter() -> LocalCounter | RedisCounter:
    url = get_settings().redis_url
    return _redis_counter(url) if url else _LOCAL


def client_of(scope: Scope) -> str:
    # The socket's peer. Behind a proxy that is the proxy, unless uvicorn runs with
    # --proxy-headers/--forwarded-allow-ips, which rewrites it from X-Forwarded-For (docs/security.md).
    client = scope.get("client")
    return client[0] if client else "unknown"


def _presented(scope: Scope) -> bool:
    return any(name in (b"authorization", b"cookie") for name, _ in scope["headers"])


def _record_throttle(client: str, failures: int, window_s: float) -> None:
    with session_scope() as session:
        audit.record(session, actor="system", action="auth.throttled", entity_type="client", entity_id=client,
                     payload={"client": client, "failures": failures, "window_s": window_s})


class AuthThrottleMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED):
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        client = client_of(scope)
        limiter = counter()
        try:
            wait = limiter.retry_after(client, settings.auth_failure_limit)
        except Exception:
            # Fail open: a Redis outage must not lock every client out; the failure is logged.
            log.warning("auth throttle check failed; not throttling", exc_info=True)
            wait = 0.0
        if wait > 0:
            metrics.inc(metrics.AUTH_THROTTLED, outcome="refused")
            body = orjson.dumps({"error": {"code": "too_many_failures",
                                           "message": "too many failed authentications from this address; retry later",
                                           "details": {"retry_after_s": round(wait, 1)}}})
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", str(int(wait) + 1).encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        status = 0

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, _send)
        state: Any = scope.get("state") or {}
        # Only a request that presented a credential counts: a missing key is a client's bug, not a guess.
        if (status == 401 or state.get("auth_failed")) and _presented(scope):
            await run_in_threadpool(self._failed, limiter, client, settings.auth_failure_limit,
                                    settings.auth_failure_window_s)

    @staticmethod
    def _failed(limiter: LocalCounter | RedisCounter, client: str, limit: int, window_s: float) -> None:
        try:
            n = limiter.failed(client, window_s)
        except Exception:
            log.warning("auth throttle count failed", exc_info=True)
            return
        if n == limit + 1:  # the failure that starts the throttle: once per window and address
            metrics.inc(metrics.AUTH_THROTTLED, outcome="started")
            _record_throttle(client, n, window_s)
