"""Key lifecycle (issue 21): expiry, rotation with an overlap window, last use written off the request
path, immediate revocation, and failed-authentication throttling (Redis and in-process)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from app.core import auth, metrics
from app.core.db import session_scope
from app.models.audit import AuditEvent
from app.models.auth import ApiKey, ApiKeyPreviousSecret
from tests.factories import new_dataset


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _new_key(api, role: str = "auditor", **extra) -> dict:
    r = api.as_("admin").post("/v1/keys", json={"name": f"k-{role}", "role": role, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def test_an_expired_key_is_401_at_once(api):
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    k = _new_key(api, expires_at=soon)
    assert k["expires_at"] is not None
    assert api.client.get("/v1/audit/verify", headers=_bearer(k["key"])).status_code == 200
    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.prefix == k["prefix"])
                  .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = api.client.get("/v1/audit/verify", headers=_bearer(k["key"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"


def test_expiry_must_be_a_future_time_with_a_zone(api):
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    for value in (past, "2099-01-01T00:00:00"):
        r = api.as_("admin").post("/v1/keys", json={"name": "x", "role": "auditor", "expires_at": value})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "expires_at", r.text


def test_rotation_keeps_the_old_secret_for_the_overlap_then_refuses_it(api):
    k = _new_key(api)
    r = api.as_("admin").post(f"/v1/keys/{k['id']}/rotate", json={"overlap_s": 3600})
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["id"] == k["id"] and new["key"] != k["key"] and new["prefix"] != k["prefix"]
    # Both secrets work during the overlap, and act as the same key.
    for secret in (k["key"], new["key"]):
        me = api.client.get("/v1/keys/me", headers=_bearer(secret))
        assert me.status_code == 200 and me.json()["ref"].endswith(k["id"][-8:])
    with session_scope() as s:
        s.execute(update(ApiKeyPreviousSecret).where(ApiKeyPreviousSecret.prefix == k["prefix"])
                  .values(valid_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = api.client.get("/v1/keys/me", headers=_bearer(k["key"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_rotated"
    assert api.client.get("/v1/keys/me", headers=_bearer(new["key"])).status_code == 200
    with session_scope() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.entity_id == k["id"]))]
    assert "api_key.rotated" in actions


def test_rotation_without_overlap_and_revocation_end_every_secret(api):
    k = _new_key(api, role="reviewer")
    r = api.as_("admin").post(f"/v1/keys/{k['id']}/rotate", json={"overlap_s": 0})
    assert r.status_code == 200
    assert api.client.get("/v1/keys/me", headers=_bearer(k["key"])).status_code == 401
    second = r.json()["key"]
    third = api.as_("admin").post(f"/v1/keys/{k['id']}/rotate").json()  # default overlap: 24 h
    assert api.client.get("/v1/keys/me", headers=_bearer(second)).status_code == 200
    assert api.as_("admin").delete(f"/v1/keys/{k['id']}").status_code == 200
    for secret in (second, third["key"]):
        r = api.client.get("/v1/keys/me", headers=_bearer(secret))
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert api.as_("admin").post(f"/v1/keys/{k['id']}/rotate").status_code == 409


def test_a_rotated_secret_in_its_overlap_works_on_the_hot_review_routes(api):
    k = _new_key(api, role="reviewer")
    ds = new_dataset(api)
    api.as_("admin").post(f"/v1/keys/{k['id']}/rotate", json={"overlap_s": 600})
    r = api.client.get("/v1/review/queue", params={"dataset": ds["id"]}, headers=_bearer(k["key"]))
    assert r.status_code == 200, r.text
    r = api.client.get("/v1/review/queue", params={"dataset": "nope"}, headers=_bearer(k["key"]))
    assert r.status_code == 404


def test_last_used_is_written_off_the_request_and_coalesced(api, monkeypatch):
    auth.USES.forget()
    k = _new_key(api)
    auth.USES.forget()
    before = auth.USES.noted
    for _ in range(5):
        assert api.client.get("/v1/audit/verify", headers=_bearer(k["key"])).status_code == 200
    # Five requests noted the key once (the background thread writes it within seconds; flush now).
    assert auth.USES.noted == before + 1
    auth.USES.flush()
    assert auth.USES.pending() == 0
    listed = {x["id"]: x for x in api.as_("admin").get("/v1/keys").json()["items"]}
    assert listed[k["id"]]["last_used_at"] is not None
    api.client.get("/v1/audit/verify", headers=_bearer(k["key"]))
    assert auth.USES.noted == before + 2  # the admin's listing; this key, within the interval, not again


@pytest.fixture
def throttled(monkeypatch, request):
    """A failure limit of 3 in a 60 s window, counted in Redis or in this process."""
    from app.core.config import reset_settings
    from app.keys import throttle

    monkeypatch.setenv("PEDIGREE_AUTH_FAILURE_LIMIT", "3")
    monkeypatch.setenv("PEDIGREE_AUTH_FAILURE_WINDOW_S", "60")
    if request.param == "redis":
        monkeypatch.setenv("PEDIGREE_REDIS_URL", request.getfixturevalue("redis_url"))
    reset_settings()
    throttle.counter().reset()
    yield request.param
    throttle.counter().reset()
    monkeypatch.delenv("PEDIGREE_REDIS_URL", raising=False)
    monkeypatch.delenv("PEDIGREE_AUTH_FAILURE_LIMIT")
    reset_settings()


@pytest.mark.parametrize("throttled", ["redis", "local"], indirect=True)
def test_repeated_failed_auth_is_throttled_metered_and_audited(api, throttled):
    started = metrics.AUTH_THROTTLED.labels(outcome="started")._value.get()
    refused = metrics.AUTH_THROTTLED.labels(outcome="refused")._value.get()
    # Requests without any credential are not guesses and do not count.
    for _ in range(5):
        assert api.client.get("/v1/datasets").status_code == 401
    for i in range(4):
        r = api.client.get("/v1/datasets", headers=_bearer(f"pdg_{i:012x}_guess"))
        assert r.status_code == 401, (i, r.text)
    # Throttled: even the right key is refused, so a correct guess is not confirmed.
    r = api.as_("curator").get("/v1/datasets")
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_failures"
    assert int(r.headers["retry-after"]) >= 1
    assert api.client.get("/healthz").status_code == 200
    assert metrics.AUTH_THROTTLED.labels(outcome="started")._value.get() == started + 1
    assert metrics.AUTH_THROTTLED.labels(outcome="refused")._value.get() == refused + 1
    with session_scope() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.throttled")))
    assert len(events) == 1 and events[0].payload["failures"] == 4 and events[0].payload["client"] == "testclient"
    from app.keys import throttle

    throttle.counter().reset()
    assert api.as_("curator").get("/v1/datasets").status_code == 200


def _until(pred, timeout: float = 2.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_failures_counted_by_one_api_process_throttle_the_others(redis_url):
    """Each API process checks a mirror of the Redis counts fed by pub/sub (no Redis call per request):
    a count made in one process reaches the others, a process started later fills its mirror from
    Redis, a mirror that is not live asks Redis, and a new window's first failure is not read as the
    old window's count."""
    import uuid

    from app.keys.throttle import RedisCounter

    client = f"throttle-test-{uuid.uuid4().hex[:8]}"
    a, b = RedisCounter(redis_url), RedisCounter(redis_url)
    assert a.wait_live(5) and b.wait_live(5)
    assert [a.failed(client, 0.8) for _ in range(3)] == [1, 2, 3]
    assert a.retry_after(client, 3) == 0.0 and b.retry_after(client, 3) == 0.0
    assert a.failed(client, 0.8) == 4
    assert a.retry_after(client, 3) > 0  # the failing process: at once, before its 401 is answered
    assert _until(lambda: b.retry_after(client, 3) > 0)  # another: within Redis's delivery
    late = RedisCounter(redis_url)
    assert late.wait_live(5) and 0 < late.retry_after(client, 3) <= 0.8
    late._live.clear()  # as while its subscription is down: every check asks Redis
    assert 0 < late.retry_after(client, 3) <= 0.8
    assert _until(lambda: a.retry_after(client, 3) == 0 and b.retry_after(client, 3) == 0)
    assert late.retry_after(client, 3) == 0.0
    assert a.failed(client, 0.8) == 1  # the next window starts from one, in every mirror
    assert _until(lambda: b._counts.get(client, (0,))[0] == 1)
    assert b.retry_after(client, 0) > 0 and b.retry_after(client, 1) == 0.0
