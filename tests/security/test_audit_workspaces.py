"""Every audited action on a team's data names the team's workspace (issue 21): the import, the pipeline
workers' stages, re-scrub, revalidation and snapshots included. Before, those events named none and so
counted as `default`'s: default's auditors read another team's figures and its own auditors missed them."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from tests.factories import NDJSON, instruction_line
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


def _import(api, cur, ds, request=None):
    r = api.client.post(f"/v1/datasets/{ds['id']}/examples", headers=_as(api, cur), json=LINES)
    assert r.status_code in (200, 201), r.text


def _stream_import(api, cur, ds, request=None):
    # The streaming import commits in sessions of its own (no request session to name the workspace).
    lines = [instruction_line(i, text_=f"Write to maria.schmidt@example.com about task {i}.") for i in range(3)]
    r = api.client.post(f"/v1/datasets/{ds['id']}/examples:import", headers={**_as(api, cur), **NDJSON},
                        content=b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


def _rescrub(api, cur, ds, request):
    # Allowing a value changes the policy: the scrubbed examples are re-scrubbed in-process after the commit.
    r = api.client.post(f"/v1/datasets/{ds['id']}/pii-policy/allow-list", headers=_as(api, cur),
                        json={"value": "maria.schmidt@example.com"})
    assert r.status_code == 200 and r.json()["rescrub"]["candidates"] >= 1, r.text


def _revalidate(api, cur, ds, request):
    r = api.client.post(f"/v1/datasets/{ds['id']}/revalidations", headers=_as(api, cur), json={"scope": "all"})
    assert r.status_code == 202, r.text


def _freeze(api, cur, ds) -> dict:
    r = api.client.post("/v1/snapshots", headers=_as(api, cur), json={"dataset_id": ds["id"], "name": "w1",
                                                                     "filter": {"statuses": ["pending_review"]}})
    assert r.status_code == 201, r.text
    return r.json()


def _snapshot(api, cur, ds, request):
    snap = _freeze(api, cur, ds)
    from app.core.db import session_scope
    from app.models.snapshot import Snapshot
    from app.snapshots import jobs

    # A large freeze leaves its Merkle root to a worker's after-commit step: put this one in that state.
    with session_scope() as s:
        s.get(Snapshot, uuid.UUID(snap["id"])).merkle_root = None
    jobs.fill_merkle_root(uuid.UUID(snap["id"]))


def _training(api, cur, ds, request):
    request.getfixturevalue("dispatched")  # the trainer's protocol is driven by hand below
    base_model = request.getfixturevalue("base_model")
    snap = _freeze(api, cur, ds)
    r = api.client.post("/v1/training-runs", headers=_as(api, cur), json={
        "snapshot_id": snap["id"], "base_model": base_model, "method": "lora", "model_name": "w-bot",
        "hyperparameters": {"epochs": 1, "max_steps": 3, "batch_tokens": 1024, "max_seq_len": 256}})
    assert r.status_code == 201, r.text
    run = r.json()
    r = api.as_("admin").post(f"/v1/training-runs/{run['id']}/start", json={"worker_host": "gpu-1"})
    assert r.status_code == 200, r.text
    from app.core.db import session_scope
    from app.models.training import TrainingRun
    from app.training.reaper import reap

    with session_scope() as s:
        s.get(TrainingRun, uuid.UUID(run["id"])).heartbeat_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with session_scope() as s:  # the reaper: a worker, no request, no workspace of its own
        assert reap(s, stale_after_s=120) == [uuid.UUID(run["id"])]


# (the action, the audit actions it must produce). The rows after the two imports run on imported data.
INGEST = {"examples.ingested", "ingest_batch.finished", "pipeline.pii.done", "pii.scrubbed", "dedup.batch"}
ACTIONS = [
    (_stream_import, INGEST),
    (_import, INGEST),
    (_rescrub, {"dataset.pii_allow_list_added", "pii.rescrub_requested", "pii.rescrubbed"}),
    (_revalidate, {"revalidation.requested", "revalidation.started", "revalidation.done"}),
    (_snapshot, {"snapshot.created", "snapshot.merkle_root"}),
    (_training, {"training_run.created", "training_run.queued", "training_run.started", "training_run.failed"}),
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
def test_each_audited_action_names_the_datasets_workspace(api, request, action, expected):
    """On SQLite and PostgreSQL (the `api` fixture runs both)."""
    ws, cur, aud, ds = _world(api)
    if action not in (_import, _stream_import):
        _import(api, cur, ds)
    before = {e["seq"] for e in _all(api, headers=_as(api, aud))}
    action(api, cur, ds, request)
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


def test_a_stage_batch_spanning_workspaces_is_audited_once_per_workspace(api, monkeypatch):
    """Workers batch examples by stage, not by dataset: one batch of team-w's and default's examples writes
    one event per workspace, each naming only that workspace's examples and counting only them."""
    from app.core import jobs
    from app.pipeline.jobs import _run_stage
    from app.pipeline.service import RUN_STAGE_TASK

    sent: list[tuple] = []
    monkeypatch.setitem(jobs.LOCAL_HANDLERS, RUN_STAGE_TASK, lambda *a: sent.append(a))  # run below, together
    ws, cur, aud, ds = _world(api)
    _stream_import(api, cur, ds)
    other = api.as_("curator").post("/v1/datasets", json={"name": "d-set", "format": "instruction"}).json()
    _stream_import(api, api.keys["curator"], other)

    def batch_of(stage: str) -> list[uuid.UUID]:
        return sorted({uuid.UUID(i) for st, batch in sent if st == stage for i in batch})

    assert len(batch_of("quality")) == 6, sent  # the first stage, deferred: both imports' examples
    assert _run_stage("quality", batch_of("quality"), None) == 6
    assert _run_stage("pii", batch_of("pii"), None) == 6  # queued by the quality batch, as one batch
    events = _all(api, headers=_as(api, api.keys["admin"]))
    default_id = next(w["id"] for w in api.as_("admin").get("/v1/workspaces").json()["items"] if w["name"] == "default")
    batch_events = ("pipeline.quality.done", "pipeline.pii.done", "pii.scrubbed")
    for action in batch_events:
        assert sorted(e["workspace_id"] for e in events if e["action"] == action) == sorted([ws["id"], default_id])
    mine = {e["action"]: e for e in _all(api, headers=_as(api, aud)) if e["action"] in batch_events}
    team_ids = {x["id"] for x in api.client.get(f"/v1/datasets/{ds['id']}/examples", headers=_as(api, cur)).json()["items"]}
    assert len(team_ids) == 3
    assert set(mine["pipeline.quality.done"]["payload"]["examples"]) == team_ids
    assert set(mine["pipeline.pii.done"]["payload"]["examples"]) == team_ids
    assert mine["pii.scrubbed"]["payload"]["examples"] == 3 and mine["pii.scrubbed"]["payload"]["findings"] >= 3
    seen = _all(api, headers=_as(api, api.keys["auditor"]))
    assert not team_ids & {i for e in seen if e["action"].startswith("pipeline.") for i in e["payload"]["examples"]}
    assert [e["payload"]["examples"] for e in seen if e["action"] == "pii.scrubbed"] == [3]
    assert api.as_("admin").get("/v1/audit/verify").json()["ok"]


# --- erasure: a selector may reach several workspaces ---------------------------------------------------

def _subject_rows(team: str, n: int) -> list[dict]:
    return [{"instruction": f"Summarise {team} ticket {i}.", "input": "", "output": f"Ticket {i} of {team} is closed.",
             "provenance": {"source": "tickets", "source_ref": f"{team}-{i}", "metadata": {"user_id": "subject-9"}}}
            for i in range(n)]


def test_erasure_events_name_each_workspace_they_touched_and_only_its_part(api):
    """A curator of team-w and team-v erases a subject found in both (and in default, out of its reach): each
    erasure event names one workspace and says only what the request did there; team-w's auditor reads its
    part (events and request), never team-v's; default's auditor, nothing of it. Both backends."""
    from tests.lineage.conftest import register_model

    admin = api.as_("admin")
    ws_w, cur_w, aud_w, ds_w = _world(api)
    ws_v = admin.post("/v1/workspaces", json={"name": "team-v"}).json()
    both_id, both = _key(api, "curator", "team-w")
    assert admin.post(f"/v1/workspaces/{ws_v['id']}/members", json={"key_id": both_id, "role": "curator"}).status_code in (200, 201)
    _, aud_v = _key(api, "auditor", "team-v")
    ds_v = api.client.post("/v1/datasets", json={"name": "v-set", "format": "instruction", "workspace": "team-v"},
                           headers=_as(api, both)).json()
    ds_d = api.as_("curator").post("/v1/datasets", json={"name": "d-subject", "format": "instruction"}).json()
    ids = {}
    for name, ds, key, n in (("w", ds_w, cur_w, 2), ("v", ds_v, both, 3), ("d", ds_d, api.keys["curator"], 1)):
        r = api.client.post(f"/v1/datasets/{ds['id']}/examples", headers=_as(api, key), json=_subject_rows(name, n))
        assert r.status_code == 201, r.text
        ids[name] = [it["id"] for it in r.json()["items"]]
    # team-v's data reaches a snapshot and a model version, which the erasure flags and taints.
    snap_v = api.client.post("/v1/snapshots", headers=_as(api, both), json={
        "dataset_id": ds_v["id"], "name": "v1", "filter": {"statuses": ["pending_review"]}})
    assert snap_v.status_code == 201, snap_v.text
    snap_v = snap_v.json()
    members = [(e, api.client.get(f"/v1/examples/{e}", headers=_as(api, both)).json()["revision"]["id"]) for e in ids["v"]]
    mv = register_model(snapshot_id=snap_v["id"], members=members, name="v-model", aliases=("prod",))

    body = {"selector": {"metadata": {"user_id": "subject-9"}}, "reason": "Art. 17 #21", "confirm": True}
    preview = api.client.post("/v1/erasure-requests", headers=_as(api, both), json={**body, "dry_run": True}).json()
    assert preview["affected"]["examples"] == 5  # default's example is out of the caller's reach
    done = api.client.post("/v1/erasure-requests", headers=_as(api, both), json=body)
    assert done.status_code == 201, done.text
    done = done.json()
    assert done["affected"]["examples"] == 5 and [m["id"] for m in done["affected"]["model_versions"]] == [mv["model_version_id"]]

    events = [e for e in _all(api, headers=_as(api, api.keys["admin"]))
              if e["entity_id"] in (preview["id"], done["id"]) and e["action"].startswith("erasure.")]
    by = {}
    for e in events:
        by.setdefault((e["entity_id"], e["action"]), []).append(e)
    for rid, actions in ((preview["id"], ["erasure.previewed"]),
                         (done["id"], ["erasure.requested", "erasure.batch_executed", "erasure.completed"])):
        for action in actions:
            got = by[(rid, action)]
            assert sorted(e["workspace_id"] for e in got) == sorted([ws_w["id"], ws_v["id"]]), (action, got)
    part = {e["workspace_id"]: e for e in by[(done["id"], "erasure.requested")]}
    assert part[ws_w["id"]]["payload"]["examples"] == 2 and part[ws_v["id"]]["payload"]["examples"] == 3
    assert part[ws_w["id"]]["payload"]["model_versions"] == 0 and part[ws_w["id"]]["payload"]["aliases"] == []
    assert part[ws_v["id"]]["payload"]["model_versions"] == 1 and part[ws_v["id"]]["payload"]["snapshots"] == 1
    for e in by[(done["id"], "erasure.batch_executed")]:
        mine = ids["w"] if e["workspace_id"] == ws_w["id"] else ids["v"]
        assert set(e["payload"]["examples"]) == set(mine)
    done_w = {e["workspace_id"]: e for e in by[(done["id"], "erasure.completed")]}[ws_w["id"]]
    assert done_w["payload"]["model_versions_tainted"] == [] and done_w["payload"]["snapshots"] == []

    # team-w's auditor: its part, by the filter and without it; nothing naming team-v's data.
    mine = [e for e in _all(api, headers=_as(api, aud_w), params={"workspace": "team-w"})
            if e["action"].startswith("erasure.")]
    assert {(e["entity_id"], e["action"]) for e in mine} == {
        (preview["id"], "erasure.previewed"), (done["id"], "erasure.requested"),
        (done["id"], "erasure.batch_executed"), (done["id"], "erasure.completed")}
    seen_w = _all(api, headers=_as(api, aud_w))
    text_w = orjson.dumps(seen_w).decode()
    assert ws_v["id"] not in {e["workspace_id"] for e in seen_w}
    assert not [x for x in [*ids["v"], snap_v["id"], mv["model_version_id"], ds_v["id"]] if x in text_w]
    assert api.client.get("/v1/audit/events", headers=_as(api, aud_w), params={"workspace": "team-v"}).status_code == 404
    # The request itself, as team-w's auditor reads it: team-w's part only.
    got = api.client.get(f"/v1/erasure-requests/{done['id']}", headers=_as(api, aud_w))
    assert got.status_code == 200, got.text
    got = got.json()
    assert got["affected"]["examples"] == 2 and sorted(got["example_ids"]) == sorted(ids["w"])
    assert got["datasets"] == {ds_w["id"]: 2} and got["affected"]["model_versions"] == []
    assert got["affected"]["aliases"] == [] and got["affected"]["snapshots"] == [] and got["warnings"] == []
    assert got["batches"] == {"total": 1, "done": 1} and got["timings_s"] == {}
    listed = [x for x in api.client.get("/v1/erasure-requests", headers=_as(api, aud_w)).json()["items"]
              if x["id"] == done["id"]]
    assert listed and listed[0]["affected"]["examples"] == 2
    text_w = orjson.dumps([got, listed]).decode()
    assert not [x for x in [*ids["v"], snap_v["id"], mv["model_version_id"], ds_v["id"]] if x in text_w]
    # team-v's auditor reads the rest, with its tainted version and alias warning.
    got_v = api.client.get(f"/v1/erasure-requests/{done['id']}", headers=_as(api, aud_v)).json()
    assert got_v["affected"]["examples"] == 3 and got_v["affected"]["aliases"] and got_v["warnings"]
    # Default's auditor: none of it (erasure events used to name no workspace and so counted as default's).
    seen = _all(api, headers=_as(api, api.keys["auditor"]))
    assert not [e for e in seen if e["entity_id"] in (preview["id"], done["id"])]
    assert api.as_("auditor").get(f"/v1/erasure-requests/{done['id']}").status_code == 404
    assert admin.get(f"/v1/examples/{ids['d'][0]}").json()["status"] != "erased"
    assert admin.get("/v1/audit/verify").json()["ok"]


def test_an_erasure_that_matched_nothing_is_about_the_workspaces_it_searched(api):
    ws_w, cur_w, aud_w, _ds = _world(api)
    r = api.client.post("/v1/erasure-requests", headers=_as(api, cur_w),
                        json={"selector": {"source_refs": ["nobody-here"]}, "reason": "Art. 17 #22"})
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    ev = [e for e in _all(api, headers=_as(api, api.keys["admin"])) if e["entity_id"] == rid]
    assert [(e["action"], e["workspace_id"]) for e in ev] == [("erasure.requested", ws_w["id"])]
    assert [e["entity_id"] for e in _all(api, headers=_as(api, aud_w), params={"workspace": "team-w"})
            if e["entity_id"] == rid] == [rid]
    assert api.client.get(f"/v1/erasure-requests/{rid}", headers=_as(api, aud_w)).status_code == 200
    assert not [e for e in _all(api, headers=_as(api, api.keys["auditor"])) if e["entity_id"] == rid]
    assert api.as_("auditor").get(f"/v1/erasure-requests/{rid}").status_code == 404
