"""Failed-authentication throttling.

Every 401 answer counts against the client's address; past `auth_failure_limit` refusals within
`auth_failure_window_s` the address gets 429 (`too_many_failures`, `Retry-After`) on *every* request,
valid key or not, until the window ends: an attacker guessing keys learns nothing from a right guess
while throttled. The counter is in Redis when the API has one (shared by every API process behind the
load balancer), in this process's memory in the embedded mode. Fixed windows: one Redis call per
failure and none per request (RedisCounter: each process keeps a mirror of the counts, fed by pub/sub).

Crossing the limit is one audit event (`auth.throttled`, the address and the count), once per window
and address, so a flood of bad keys cannot flood the chain; every refusal is counted in
`pedigree_auth_throttled_total`.
"""

from __future__ import annotations

import contextlib
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


# One failure, atomically: count it, start the window at the first failure (the key's expiry), and
# announce the new count to every API process. The expiry's absolute time names the window, so a
# mirror tells a later count of the same window from the first count of the next one.
_FAILED = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
local window = redis.call('PEXPIRETIME', KEYS[1])
redis.call('PUBLISH', ARGV[2], n .. ' ' .. window .. ' ' .. ttl .. ' ' .. ARGV[3])
return {n, window, ttl}
"""


class RedisCounter:
    """The counts live in Redis, shared by every API process; the check every request makes reads a
    mirror in this process instead of Redis.

    Every failure runs one script that counts it and publishes the new count; each process subscribes
    and keeps, per address that failed, its count and when its window ends. The check on the request
    path is then a dict lookup: it was a synchronous GET on the event loop, 16% of an API worker's
    samples under bench.review, and while a busy Redis answered, every request of that worker waited.

    The mirror answers only while it is live: subscribed, then filled from Redis's own keys (so counts
    from before this process started, or from while it was disconnected, are in it). Until then and
    after any error on the subscription the check asks Redis per request as before, and the listener
    reconnects. A count published by another process reaches this one within Redis's delivery time (the
    same moment a GET racing that INCR would have missed it); a count this process made is in its mirror
    before the failing request is answered."""

    def __init__(self, url: str) -> None:
        import redis

        self._url = url
        # Short timeouts: a slow Redis must not become a slow API.
        self._r = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._script = self._r.register_script(_FAILED)
        # Pub/sub is server-wide, keys are per database: one channel per database.
        db = self._r.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"pedigree:authfail-counts:{db}"
        # address -> (failures, window id = the key's absolute expiry in ms, window end on this clock)
        self._counts: dict[str, tuple[int, int, float]] = {}
        self._lock = threading.Lock()
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="auth-throttle-mirror", daemon=True)
        self._thread.start()

    def retry_after(self, client: str, limit: int) -> float:
        if not self._live.is_set():
            n = self._r.get(REDIS_PREFIX + client)
            if n is None or int(n) <= limit:
                return 0.0
            return max(self._r.pttl(REDIS_PREFIX + client), 0) / 1000.0
        n, _, end = self._counts.get(client, (0, 0, 0.0))
        left = end - time.monotonic()
        return left if n > limit and left > 0 else 0.0

    def failed(self, client: str, window_s: float) -> int:
        n, window, ttl = self._script(keys=[REDIS_PREFIX + client],
                                      args=[int(window_s * 1000), self.channel, client])
        self._note(client, int(n), int(window), int(ttl))
        return int(n)

    def _note(self, client: str, n: int, window: int, ttl_ms: int) -> None:
        end = time.monotonic() + max(ttl_ms, 0) / 1000.0
        with self._lock:
            old = self._counts.get(client)
            if old is not None and old[1] > window:  # a count of an earlier window, arriving late
                return
            if old is not None and old[1] == window:
                n, end = max(n, old[0]), max(end, old[2])
            if len(self._counts) > 100_000:  # spoofed spreads of addresses must not grow this forever
                now = time.monotonic()
                self._counts = {k: v for k, v in self._counts.items() if v[2] > now}
            self._counts[client] = (n, window, end)

    def _apply(self, data: bytes) -> None:
        if data == b"reset":
            with self._lock:
                self._counts.clear()
            return
        n, window, ttl, client = data.decode().split(" ", 3)
        self._note(client, int(n), int(window), int(ttl))

    def _sync(self) -> None:
        """Fills the mirror from the keys in Redis (after subscribing, so nothing falls between)."""
        keys = list(self._r.scan_iter(REDIS_PREFIX + "*", count=1000))
        for i in range(0, len(keys), 500):
            pipe = self._r.pipeline(transaction=False)
            for key in keys[i:i + 500]:
                pipe.get(key)
                pipe.execute_command("PEXPIRETIME", key)
                pipe.pttl(key)
            got = pipe.execute()
            for j, key in enumerate(keys[i:i + 500]):
                n, window, ttl = got[3 * j:3 * j + 3]
                if n is not None and int(window) > 0:
                    self._note(key.decode()[len(REDIS_PREFIX):], int(n), int(window), int(ttl))

    def _listen(self) -> None:
        import redis

        # No read timeout (the subscription idles between failures); keepalive finds a dead peer.
        sub = redis.Redis.from_url(self._url, socket_connect_timeout=0.25, socket_keepalive=True,
                                   health_check_interval=30)
        while True:
            ps = sub.pubsub()
            try:
                ps.subscribe(self.channel)
                deadline = time.monotonic() + 5
                while (m := ps.get_message(timeout=1.0)) is None or m["type"] != "subscribe":
                    if time.monotonic() > deadline:
                        raise TimeoutError("no subscribe confirmation")
                self._sync()
                self._live.set()
                while True:
                    m = ps.get_message(timeout=30.0)
                    if m is not None and m["type"] == "message":
                        self._apply(m["data"])
            except Exception:  # the check falls back to Redis; retry the subscription
                if self._live.is_set():
                    log.warning("auth throttle mirror lost its subscription; checking Redis per request",
                                exc_info=True)
                self._live.clear()
                time.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    ps.close()

    def wait_live(self, timeout: float) -> bool:
        return self._live.wait(timeout)

    def reset(self) -> None:
        for key in self._r.scan_iter(REDIS_PREFIX + "*"):
            self._r.delete(key)
        with self._lock:
            self._counts.clear()
        self._r.publish(self.channel, "reset")


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
