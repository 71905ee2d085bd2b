"""Every audited action on a team's data names the team's workspace (issue 21): the import, the pipeline
workers' stages, re-scrub, revalidation and snapshots included. Before, those events named none and so
counted as `default`'s: default's auditors read another team's figures and its own auditors missed them."""

from __future__ import annotations

import pytest

from tests.security.test_workspace_roles import _as, _key

LINES = [
    {"instruction": "Explain the tides briefly.", "input": "", "output": "The moon's pull lifts the sea twice a day."},
    {"instruction": "Name a prime.", "input": "", "output": "Seven is prime; write to maria.schmidt@example.com."},
]


def _world(api):
    admin = api.as_("admin")
    ws = admin.post("/v1/workspaces", json={"name": "team-w"}).json()
    _, cur = _key(api, "curator", "team-w")
    _, aud = _key(api, "auditor", "team-w")
    ds = api.client.post("/v1/datasets", json={"name": "w-set", "format": "instruction", "workspace": "team-w"},
                         headers=_as(api, cur)).json()
    return ws, cur, aud, ds


def _import(api, cur, ds):
    r = api.client.post(f"/v1/datasets/{ds['id']}/examples", headers=_as(api, cur), json=LINES)
    assert r.status_code in (200, 201), r.text


def _rescrub(api, cur, ds):
    policy = api.client.get(f"/v1/datasets/{ds['id']}/pii-policy", headers=_as(api, cur)).json()
    r = api.client.request("PUT", f"/v1/datasets/{ds['id']}/pii-policy", headers=_as(api, cur), json=policy)
    assert r.status_code == 200, r.text


def _revalidate(api, cur, ds):
    r = api.client.post(f"/v1/datasets/{ds['id']}/revalidations", headers=_as(api, cur), json={"scope": "all"})
    assert r.status_code == 202, r.text


def _snapshot(api, cur, ds):
    r = api.client.post("/v1/snapshots", headers=_as(api, cur), json={"dataset_id": ds["id"], "name": "w1",
                                                                     "filter": {"statuses": ["pending_review"]}})
    assert r.status_code in (200, 201, 202), r.text


# (the action, the audit actions it must produce). Each row runs after the import (the later ones need data).
ACTIONS = [
    (_import, {"examples.ingested", "ingest_batch.finished", "pipeline.pii.done", "pii.scrubbed", "dedup.batch"}),
    (_rescrub, {"dataset.pii_policy_set", "pii.rescrub_requested"}),
    (_revalidate, {"revalidation.requested", "revalidation.started", "revalidation.done"}),
    (_snapshot, {"snapshot.created"}),
]


def _all(api, headers=None, params=None) -> list[dict]:
    items, after = [], 0
    while True:
        r = api.client.get("/v1/audit/events", headers=headers, params={**(params or {}), "limit": 1000, "after": after})
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        after = r.json()["next_after"]
        if after is None:
            return items


@pytest.mark.parametrize("action,expected", ACTIONS, ids=[a.__name__.strip("_") for a, _ in ACTIONS])
def test_each_audited_action_names_the_datasets_workspace(api, action, expected):
    """On SQLite and PostgreSQL (the `api` fixture runs both)."""
    ws, cur, aud, ds = _world(api)
    if action is not _import:
        _import(api, cur, ds)
    before = {e["seq"] for e in _all(api, headers=_as(api, aud))}
    action(api, cur, ds)
    mine = [e for e in _all(api, headers=_as(api, aud)) if e["seq"] not in before]
    filtered = _all(api, headers=_as(api, aud), params={"workspace": "team-w"})
    got = {e["action"] for e in mine}
    assert expected <= got, f"missing from team-w's auditor: {expected - got}"
    assert {e["workspace_id"] for e in mine} == {ws["id"]}
    assert expected <= {e["action"] for e in filtered if e["seq"] not in before}
    # The default workspace's auditor sees none of them, nor anything naming the dataset.
    seen = _all(api, headers=_as(api, api.keys["auditor"]))
    leaked = [e for e in seen if e["workspace_id"] == ws["id"] or e["entity_id"] == ds["id"]
              or (e.get("payload") or {}).get("dataset_id") == ds["id"]]
    assert not leaked, leaked
    assert not expected & {e["action"] for e in seen if e["seq"] > min(x["seq"] for x in mine)}
    assert api.as_("admin").get("/v1/audit/verify").json()["ok"]
