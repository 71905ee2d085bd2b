"""Stage leases and the sweeper: what a dead task leaves behind is found within a lease, what a live
task holds or a queue still carries is left alone."""

import datetime as dt
import threading
import time

import orjson
import psycopg
import pytest
import redis
from sqlalchemy import select, update

from app.core.db import session_scope
from app.models.base import utcnow
from app.models.example import Example
from app.models.pipeline import StageLease
from app.pipeline import jobs as pipeline
from tests.factories import new_dataset
from tests.support import celery_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def broker(pg_api, pg, redis_url, monkeypatch):
    """Examples stored in-process (no broker yet), then settings pointed at a real Redis database."""
    ds = new_dataset(pg_api)
    body = b"\n".join(orjson.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(3))
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                   headers={"Content-Type": "application/x-ndjson"})
    assert r.json()["accepted"] == 3
    with celery_env(pg, monkeypatch, "stage_lease") as env:
        with session_scope() as s:
            ids = sorted(s.scalars(select(Example.id)))
        yield redis.Redis.from_url(env["PEDIGREE_REDIS_URL"]), ids


def _at(ids, stage, *, age_s):
    with session_scope() as s:
        s.execute(update(Example).where(Example.id.in_(ids))
                  .values(stage=stage, status="scrubbed", updated_at=utcnow() - dt.timedelta(seconds=age_s)))


def _lease(ids, stage, *, expires_in_s):
    with session_scope() as s:
        s.add(StageLease(stage=stage, example_ids=[str(i) for i in ids], holder="test:1", claimed_at=utcnow(),
                         expires_at=utcnow() + dt.timedelta(seconds=expires_in_s)))


def _queued(r, queue):
    return [orjson.loads(m)["headers"]["argsrepr"] for m in r.lrange(queue, 0, -1)]


def test_an_expired_lease_is_swept_a_live_one_is_not(broker):
    r, (dead, alive, free) = broker
    _at([dead, alive], "dedup", age_s=1)  # recently moved: only the lease can say the task died
    _at([free], "dedup", age_s=1)
    _lease([dead], "dedup", expires_in_s=-1)
    _lease([alive], "dedup", expires_in_s=60)
    assert pipeline.sweep() == 1
    [args] = _queued(r, "dedup")
    assert str(dead) in args and str(alive) not in args
    with session_scope() as s:  # the dead lease is gone, the live one stays
        assert [lease.example_ids for lease in s.scalars(select(StageLease))] == [[str(alive)]]


def test_an_idle_example_is_swept_only_once_its_queue_is_empty(broker):
    r, (a, b, c) = broker
    _at([a, b], "dedup", age_s=120)
    _at([c], "dedup", age_s=7200)  # older than any cutoff: a deep backlog is not re-enqueued either
    _lease([b], "dedup", expires_in_s=60)  # a live task holds b, however long it has been at the stage
    r.lpush("dedup", b"a message that may be the one carrying a")
    assert pipeline.sweep() == 0
    r.delete("dedup")
    assert pipeline.sweep() == 2
    [args] = _queued(r, "dedup")
    assert str(a) in args and str(c) in args and str(b) not in args


def test_a_running_task_renews_its_lease_and_its_commit_removes_it(broker, pg, monkeypatch):
    monkeypatch.setenv("PEDIGREE_STAGE_LEASE_S", "0.6")
    from app.core.config import reset_settings

    reset_settings()
    _, ids = broker
    _at(ids, "quality", age_s=0)
    done: list[int] = []
    # Hold the task inside its stage: the quality handler reads revisions, which this lock blocks.
    with psycopg.connect(pg.replace("postgresql+psycopg://", "postgresql://")) as blocker:
        blocker.execute("LOCK TABLE example_revisions IN ACCESS EXCLUSIVE MODE")
        t = threading.Thread(target=lambda: done.append(pipeline.run_stage("quality", ids)))
        t.start()
        time.sleep(0.3)
        with session_scope() as s:
            first = s.scalar(select(StageLease.expires_at))
        time.sleep(1.5)  # more than two lease periods: without renewals it would have expired
        with session_scope() as s:
            later = s.scalar(select(StageLease.expires_at))
        assert later > first and later > utcnow()
        assert pipeline.sweep() == 0
        blocker.rollback()
    t.join(30)
    assert done == [3]
    with session_scope() as s:
        assert s.scalar(select(StageLease.id)) is None
        assert {e.stage for e in s.scalars(select(Example))} == {"pii"}

