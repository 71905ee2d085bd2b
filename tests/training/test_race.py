"""PostgreSQL races: a completion against a cancel and the reaper ends in exactly one final state (and
leaves a version with its lineage only when it won); runs finishing together under one model name
get distinct, gapless versions."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.factories import complete_body, fake_artifact, snapshot

pytestmark = pytest.mark.postgres


def _started(api, snap, base_model, name="race-model"):
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                          "model_name": name})
    rid = r.json()["id"]
    assert api.as_("trainer").post(f"/v1/training-runs/{rid}/start", json={"worker_host": "h"}).status_code == 200
    return rid


def _together(*fns):
    barrier = threading.Barrier(len(fns))
    results: list = [None] * len(fns)

    def go(i, fn):
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i, f)) for i, f in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _count(sql: str, rid: str) -> int:
    from sqlalchemy import text

    from app.core.db import session_scope

    with session_scope() as s:
        return s.execute(text(sql), {"r": rid}).scalar_one()


def test_complete_cancel_reap_race_has_one_winner(pg_api, dispatched, base_model, artifact_root):
    from app.core.auth import Actor
    from app.core.db import session_scope
    from app.core.errors import Conflict
    from app.training import service
    from app.training.reaper import reap
    from app.training.schemas import RunComplete

    api = pg_api
    snap, recs = snapshot(api)
    trainer = Actor(key_id=uuid.UUID(int=5), name="t", role="trainer")
    curator = Actor(key_id=uuid.UUID(int=6), name="c", role="curator")
    for _ in range(6):
        rid = _started(api, snap, base_model)
        uri, sha = fake_artifact(artifact_root, "race-model", rid)
        body = RunComplete.model_validate(complete_body(recs, uri, sha))

        def complete(rid=rid, body=body):
            with session_scope() as s:
                service.complete(s, run_id=rid, data=body, actor=trainer)
            return "succeeded"

        def cancel(rid=rid):
            with session_scope() as s:
                service.cancel(s, run_id=rid, actor=curator)
            return "cancelled"

        def reaper():
            with session_scope() as s:
                return "failed" if reap(s, stale_after_s=0) else None

        results = _together(complete, cancel, reaper)
        winners = [r for r in results if isinstance(r, str)]
        assert all(isinstance(r, Conflict) or r is None or isinstance(r, str) for r in results), results
        final = api.as_("auditor").get(f"/v1/training-runs/{rid}").json()
        assert winners == [final["status"]], (results, final["status"])
        versions = _count("SELECT count(*) FROM model_versions WHERE run_id = CAST(:r AS uuid)", rid)
        lineage = _count("SELECT count(*) FROM lineage WHERE run_id = CAST(:r AS uuid)", rid)
        if final["status"] == "succeeded":
            assert versions == 1 and lineage == len(body.examples)
        else:
            assert versions == 0 and lineage == 0
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True


def test_simultaneous_registrations_get_distinct_versions(pg_api, dispatched, base_model, artifact_root):
    from app.core.auth import Actor
    from app.core.db import session_scope
    from app.training import service
    from app.training.schemas import RunComplete

    api = pg_api
    snap, recs = snapshot(api)
    trainer = Actor(key_id=uuid.UUID(int=5), name="t", role="trainer")
    fns = []
    for _ in range(4):
        rid = _started(api, snap, base_model, name="shared-name")
        uri, sha = fake_artifact(artifact_root, "shared-name", rid, payload=rid.encode())
        body = RunComplete.model_validate(complete_body(recs, uri, sha))

        def complete(rid=rid, body=body):
            with session_scope() as s:
                _, mv = service.complete(s, run_id=rid, data=body, actor=trainer)
                return mv.version

        fns.append(complete)
    got = _together(*fns)
    assert sorted(got) == [1, 2, 3, 4], got


def test_simultaneous_retries_with_one_idempotency_key_make_one_run(pg_api, dispatched, base_model):
    api = pg_api
    snap, _ = snapshot(api)
    body = {"snapshot_id": snap["id"], "base_model": base_model, "model_name": "race-model"}

    def create():
        r = api.as_("curator").post("/v1/training-runs", json=body, headers={"Idempotency-Key": "k-1"})
        return r.status_code, r.json()["id"]

    got = _together(*[create] * 6)
    assert len({rid for _, rid in got}) == 1, got
    assert sorted(code for code, _ in got) == [200] * 5 + [201]
    assert _count("SELECT count(*) FROM training_runs WHERE CAST(id AS text) = :r", got[0][1]) == 1
    assert len(dispatched) == 1
