"""Concurrency on the real PostgreSQL: many reviewers at once, through the services and their own
transactions (the same code the API runs per request)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from app.core import auth
from app.core.db import session_scope
from app.core.errors import PedigreeError
from app.models.audit import AuditEvent
from app.models.dataset import Dataset
from app.models.review import Review
from app.review import decisions, queue
from app.review.schemas import ReviewIn
from tests.factories import ingest_for_review as ingest
from tests.factories import new_dataset

pytestmark = pytest.mark.postgres


def reviewers(n: int) -> list[auth.Actor]:
    out = []
    with session_scope() as s:
        for i in range(n):
            row, _ = auth.create_key(s, name=f"race-{i}", role="reviewer")
            out.append(auth.Actor(key_id=row.id, name=row.name, role="reviewer"))
    return out


def take(ds_id: str, actor: auth.Actor, limit: int = 1) -> list[dict]:
    with session_scope() as s:
        return queue.next_items(s, dataset=s.get(Dataset, uuid.UUID(ds_id)), actor=actor, limit=limit,
                                with_view=False)


def test_concurrent_queue_calls_split_the_items(pg_api):
    ds = new_dataset(pg_api)
    ids = ingest(pg_api, ds, 40)
    actors = reviewers(16)
    gate = threading.Barrier(len(actors))

    def grab(actor):
        gate.wait()
        return [i["example_id"] for i in take(ds["id"], actor, limit=3)]

    with ThreadPoolExecutor(len(actors)) as pool:
        got = list(pool.map(grab, actors))
    handed = [e for g in got for e in g]
    assert len(handed) == len(set(handed)) == 40  # 16 x 3 asked, 40 exist: all handed, none twice
    assert set(handed) == set(ids)


def test_fifty_reviewers_pull_and_decide_and_nothing_is_decided_twice(pg_api):
    ds = new_dataset(pg_api)
    ingest(pg_api, ds, 120)
    actors = reviewers(50)
    gate = threading.Barrier(len(actors))
    log: list[tuple[str, str]] = []
    lock = threading.Lock()

    def review(actor):
        gate.wait()
        while True:
            items = take(ds["id"], actor)
            if not items:
                return
            it = items[0]
            with lock:
                log.append((it["example_id"], actor.ref))
            with session_scope() as s:
                decisions.decide(s, example_id=it["example_id"], actor=actor,
                                 data=ReviewIn(decision="approve", revision_id=it["revision_id"]))

    with ThreadPoolExecutor(len(actors)) as pool:
        list(pool.map(review, actors))
    per_item = Counter(e for e, _ in log)
    assert len(per_item) == 120 and max(per_item.values()) == 1
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 120
        twice = s.execute(select(Review.example_id).group_by(Review.example_id).having(func.count() > 1)).all()
        assert twice == []


def test_simultaneous_approvals_settle_the_status_once(pg_api):
    ds = new_dataset(pg_api, review_policy={"required_approvals": 2})
    (eid,) = ingest(pg_api, ds, 1)
    rid = pg_api.as_("reviewer").get(f"/v1/examples/{eid}").json()["revision"]["id"]
    a, b = reviewers(2)
    gate = threading.Barrier(4)

    def approve(actor):
        gate.wait()
        try:
            with session_scope() as s:
                return decisions.decide(s, example_id=eid, actor=actor,
                                        data=ReviewIn(decision="approve", revision_id=uuid.UUID(rid)))["example"]["status"]
        except PedigreeError as e:
            return e.code

    # Each reviewer twice, all four at once: two decisions land, the repeats are refused.
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(approve, [a, b, a, b]))
    c = Counter(outcomes)
    assert c["approved"] == 1 and c["pending_review"] == 1
    # A repeat is refused as already decided, or as not pending once the second approval landed.
    assert c["already_decided"] + c["not_pending"] == 2
    with session_scope() as s:
        changed = s.scalar(select(func.count()).select_from(AuditEvent)
                           .where(AuditEvent.action == "example.status_changed", AuditEvent.entity_id == eid))
        assert changed == 1
