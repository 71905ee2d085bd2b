"""A worker killed with SIGKILL mid-batch: its batch runs again within a lease, once."""

from __future__ import annotations

import time

import pytest
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

N = 240


def test_a_killed_worker_s_batch_is_run_again_within_the_lease_bound(stack):
    from app.main import create_app

    stack.start_beat()
    stack.start_worker("w1")
    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        ds = new_dataset(api)
        r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=examples_ndjson(N, "kill"),
                                    headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 200 and r.json()["accepted"] == N, r.text

    # Kill while the pii batch runs (its lease is committed, its transaction open).
    wait_for("the pii stage to start", lambda: stack.sql("SELECT 1 FROM stage_leases WHERE stage = 'pii'"), 120,
             poll_s=0.05)
    time.sleep(0.5)
    leased = {e for (ids,) in stack.sql("SELECT example_ids FROM stage_leases WHERE stage = 'pii'") for e in ids}
    stack.kill("w1")
    t_kill = time.monotonic()
    [(at_pii,)] = stack.sql("SELECT count(*) FROM examples WHERE stage = 'pii'")
    assert at_pii > 0, "the batch finished before the kill: nothing was tested"
    stack.start_worker("w2")

    def recovered() -> bool:
        [(left,)] = stack.sql("SELECT count(*) FROM examples WHERE stage = 'pii' AND id::text = ANY(%s)", list(leased))
        return left == 0

    # Lease expiry (<= LEASE_S after the last renewal), the next sweep (<= SWEEP_S), then the batch
    # itself on a worker that starts cold (imports, spaCy model load): 45 s for that on 2 busy cores.
    bound = LEASE_S + SWEEP_S + 45
    wait_for("the killed batch to be run again", recovered, bound)
    recovery = time.monotonic() - t_kill
    wait_for("the pipeline to finish", lambda: pipeline_done(stack, N), 120)
    settled = time.monotonic() - t_kill
    print(f"\nworker SIGKILL: killed batch ({len(leased)} examples) done {recovery:.1f} s after the kill, "
          f"pipeline settled after {settled:.1f} s (lease {LEASE_S:.0f} s, sweep every {SWEEP_S:.0f} s, "
          f"bound asserted {bound:.0f} s)")
    assert "sweeper re-enqueued" in stack.log("w2")
    assert_each_stage_ran_once(stack, N)
    assert_audit_chain_verifies()
