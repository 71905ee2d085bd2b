"""Redis killed with SIGKILL during processing and restarted on its port (AOF on): queued tasks
survive, an import during the outage is stored and answered truthfully, the sends that failed during
the outage are swept, nothing is lost or run twice, and the pipeline settles within the bound."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from tests.factories import Api, make_keys, new_dataset
from tests.faults.conftest import LEASE_S, SWEEP_S
from tests.faults.helpers import (
    assert_audit_chain_verifies,
    assert_each_stage_ran_once,
    examples_ndjson,
    pipeline_done,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.worker]

IMPORTS, PER_IMPORT, DURING_OUTAGE = 3, 80, 40
N = IMPORTS * PER_IMPORT + DURING_OUTAGE
# Longer than a send after commit keeps retrying (~5 s with Celery's own publish retries), so the
# batch that finishes during the outage gives up its next stage's send and only the sweeper is left.
OUTAGE_S = 8.0


def test_a_redis_restart_loses_no_task(stack):
    from app.main import create_app

    stack.start_beat()
    stack.start_worker("w1")
    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        ds = new_dataset(api)

        def import_(tag: str, n: int):
            return api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import",
                                           content=examples_ndjson(n, tag),
                                           headers={"Content-Type": "application/x-ndjson"})

        for k in range(IMPORTS):  # one batch each: while the first is at pii the others queue behind it
            r = import_(f"rds{k}-", PER_IMPORT)
            assert r.status_code == 200 and r.json()["accepted"] == PER_IMPORT, r.text

        wait_for("the pii stage to start", lambda: stack.sql("SELECT 1 FROM stage_leases WHERE stage = 'pii'"), 120,
                 poll_s=0.05)
        broker = redis.Redis(port=stack.redis.port)
        queues = ("default", "pii", "dedup")
        queued = sum(broker.llen(q) for q in queues)
        stack.redis.kill9()
        t_kill = time.monotonic()
        # An import while Redis is down: stored, and answered with what was stored (its first stage's
        # send is given up after its retries; the sweeper enqueues it once Redis is back).
        r = import_("outage-", DURING_OUTAGE)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == DURING_OUTAGE == stack.sql(
            "SELECT count(*) FROM examples WHERE ingest_batch_id = %s", r.json()["batch_id"])[0][0]
        assert time.monotonic() - t_kill < OUTAGE_S, "the import outlasted the outage: nothing was tested"
        time.sleep(OUTAGE_S - (time.monotonic() - t_kill))
    stack.redis.start()
    t_back = time.monotonic()
    # The worker takes one message at a time (prefetch 1): at most one can have left the queue.
    assert queued == 0 or sum(broker.llen(q) for q in queues) >= queued - 1, "queued tasks were lost with Redis"
    # Messages lost with Redis (or never sent while it was down) are found by the sweeper once their
    # queue is empty and the examples have been idle for a lease; then one batch per stage is left.
    bound = LEASE_S + SWEEP_S + 60
    wait_for("the pipeline to finish", lambda: pipeline_done(stack, N), bound)
    settled = time.monotonic() - t_back
    print(f"\nredis SIGKILL + {OUTAGE_S:.0f} s outage ({queued} tasks queued at the kill, an import of "
          f"{DURING_OUTAGE} during it): pipeline settled {settled:.1f} s after Redis was back (lease {LEASE_S:.0f} s, "
          f"sweep every {SWEEP_S:.0f} s, bound asserted {bound:.0f} s); sends given up: "
          f"{stack.log('w1').count('could not send')} in the worker, sweeps that re-enqueued: "
          f"{stack.log('w1').count('sweeper re-enqueued')}")
    assert_each_stage_ran_once(stack, N)
    assert_audit_chain_verifies()
