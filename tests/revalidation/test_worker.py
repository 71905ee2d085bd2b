"""A real Celery worker revalidating through Redis and PostgreSQL after a recognizer change, its pool process
killed mid-batch: the redelivered task resumes after the last committed batch, no example is skipped and
none is revised twice."""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest
from sqlalchemy import text

from tests.factories import Api, make_keys, new_dataset, set_status
from tests.pii.test_worker import _children
from tests.revalidation.conftest import TOKEN
from tests.support import start_worker, stop_worker

pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.postgres]

N, EVERY, BATCH = 200, 10, 20


def _wait(what: str, cond, timeout: float, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_revalidation_resumes_without_skipping_or_revising_twice(worker_env, acme_file):
    from fastapi.testclient import TestClient

    from app.core import jobs
    from app.core.db import get_engine
    from app.main import create_app
    from app.revalidation.service import CHECK_TASK

    engine = get_engine()

    def one(sql: str, **kw):
        with engine.connect() as c:
            return c.execute(text(sql), kw).scalar()

    w1 = start_worker(worker_env, name="reval1")
    logs = []
    try:
        with TestClient(create_app()) as client:
            api = Api(client, make_keys())
            ds = new_dataset(api)
            body = b"\n".join(orjson.dumps({
                "instruction": f"How do I reset the router in room {i}?", "input": "",
                "output": (f"Use the service token {TOKEN} once." if i % EVERY == 0 else "Hold the button.") + f" ({i})",
                "provenance": {"source": "t", "source_ref": f"r{i}"}}) for i in range(N))
            r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                        headers={"Content-Type": "application/x-ndjson"})
            assert r.json()["accepted"] == N
            _wait("the pipeline", lambda: api.as_("auditor").get(f"/v1/datasets/{ds['id']}").json()["counts"]
                  .get("pending_review") == N, 180, 0.5)
        logs.append(stop_worker(w1))
        ids = [str(i) for i in one_list(engine, "SELECT id FROM examples ORDER BY id")]
        set_status(ids, "approved")
        revisions_before = one("SELECT count(*) FROM example_revisions")

        # The deploy: a worker with the new recognizer. A lock on one example of the third batch holds the
        # revalidation there, so the kill lands inside a batch, never between two.
        env = {**worker_env, "PEDIGREE_PII_EXTRA_RECOGNIZERS": str(acme_file),
               "PEDIGREE_REVALIDATION_BATCH_SIZE": str(BATCH)}
        w2 = start_worker(env, name="reval2")
        holder = engine.connect()
        holder.execute(text("SELECT id FROM examples WHERE id = :i FOR UPDATE"), {"i": ids[2 * BATCH + 5]})
        jobs.send(CHECK_TASK, [ds["id"]], "pii")
        _wait("two committed batches", lambda: (one("SELECT batches FROM revalidations") or 0) >= 2, 180)
        _wait("the third batch waiting on the lock", lambda: one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"), 60)
        done_at_kill = one("SELECT done FROM revalidations")
        children = _children(w2.pid)
        assert children
        for child in children:  # the prefork pool process running the task
            os.kill(child, signal.SIGKILL)
        holder.rollback()
        holder.close()

        _wait("the revalidation to finish", lambda: one("SELECT status FROM revalidations") == "done", 180, 0.5)
        _wait("the changed examples through the pipeline", lambda: one(
            "SELECT count(*) FROM examples WHERE stage IS NOT NULL") == 0, 120, 0.5)
        logs.append(stop_worker(w2))
        with engine.connect() as c:
            rv = c.execute(text("SELECT * FROM revalidations")).mappings().one()
            assert rv["done"] == N and rv["total"] == N and done_at_kill == 2 * BATCH
            assert rv["changed"] == N // EVERY and rv["unchanged"] == N - N // EVERY
            assert rv["approvals_reset"] == N // EVERY
            # One new revision per changed example, none for the others: nothing revised twice.
            assert one("SELECT count(*) FROM example_revisions") == revisions_before + N // EVERY
            per = c.execute(text("SELECT e.source_ref, count(r.id) FROM examples e JOIN example_revisions r "
                                 "ON r.example_id = e.id AND r.comment LIKE 're-scrubbed: revalidation%' "
                                 "GROUP BY e.source_ref")).all()
            assert sorted(int(ref[1:]) for ref, n in per if n == 1) == list(range(0, N, EVERY)), per
            # Every example brought to the new recognizer set, none skipped.
            target = rv["target"]["recognizers"]
            assert c.execute(text("SELECT count(*) FROM example_validations WHERE recognizers = :t"),
                             {"t": target}).scalar() == N
            status = dict(c.execute(text("SELECT status, count(*) FROM examples GROUP BY status")).all())
            assert status == {"approved": N - N // EVERY, "pending_review": N // EVERY}
            leaked = c.execute(text("SELECT count(*) FROM example_revisions r JOIN examples e "
                                    "ON e.current_revision_id = r.id WHERE r.content::text LIKE :t"),
                               {"t": f"%{TOKEN}%"}).scalar()
            assert leaked == 0
        with TestClient(create_app()) as client:
            assert Api(client, make_keys()).as_("auditor").get("/v1/audit/verify").json()["ok"]
    finally:
        for p in (w1, locals().get("w2")):
            if p is not None and p.poll() is None:
                logs.append(stop_worker(p))
        print(b"\n".join(logs).decode(errors="replace")[-8000:])
    assert b"pedigree.revalidation.run" in logs[-1]
    # The task ran twice: once killed, once redelivered.
    assert logs[-1].count(b"Task pedigree.revalidation.run[") >= 2


def one_list(engine, sql: str) -> list:
    with engine.connect() as c:
        return list(c.execute(text(sql)).scalars())
