"""Revalidation on SQLite and PostgreSQL through the app (tasks in-process, the embedded mode's path): the
validation record the pipeline writes, a recognizer change detected by comparing versions and re-queued
(new revisions only where the output changes, approvals of changed content back to review, the unchanged
ones' approvals kept, the prefilter clearing the rest without the model), idempotence, a dedup policy
change, a newer request superseding a running one, and bad input."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select, update

from app.core.db import session_scope
from app.models.example import ExampleRevision
from app.models.validation import ExampleValidation, Revalidation
from app.revalidation import jobs
from tests.factories import get_example, ingest, instruction_line, new_dataset
from tests.revalidation.conftest import TOKEN, deploy_recognizers


def _lines(n: int, with_token: set[int]) -> list[dict]:
    out = []
    for i in range(n):
        line = instruction_line(i)
        if i in with_token:
            line["output"] = f"Use the service token {TOKEN} for step {i}."
        out.append(line)
    return out


def _revisions(eid: str) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(ExampleRevision)
                        .where(ExampleRevision.example_id == uuid.UUID(eid)))


def _approve(api, eid: str) -> None:
    rid = get_example(api, eid)["revision"]["id"]
    r = api.as_("reviewer").post(f"/v1/examples/{eid}/reviews", json={"decision": "approve", "revision_id": rid})
    assert r.status_code in (200, 201), r.text


def test_the_pipeline_writes_what_validated_an_example(api):
    ds = new_dataset(api)
    [eid] = ingest(api, ds, _lines(1, set()))
    ex = get_example(api, eid)
    v = ex["validation"]
    assert v["via"] == "pipeline" and v["current"] and v["revision_id"] == ex["revision"]["id"]
    assert v["pii_engine"].startswith("presidio-analyzer==") and "==" in v["spacy_model"]
    assert len(v["recognizers"]) == 64 and len(v["dedup_policy_sha256"]) == 64
    seen = dt.datetime.fromisoformat(ex["last_validated_at"])
    assert dt.datetime.fromisoformat(v["validated_at"]) == (seen if seen.tzinfo else seen.replace(tzinfo=dt.UTC))
    assert v["reviews"] == {}
    _approve(api, eid)
    assert get_example(api, eid)["validation"]["reviews"] == {"approve": 1}


def test_a_recognizer_change_revalidates_only_what_it_changes(api, acme_file, monkeypatch):
    ds = new_dataset(api)
    n, tokened = 12, {1, 4, 7}
    ids = ingest(api, ds, _lines(n, tokened))
    for i in (0, 1, 2, 4):  # approved: two whose content will change (1, 4), two whose will not
        _approve(api, ids[i])
    before = {i: _revisions(e) for i, e in enumerate(ids)}
    old = get_example(api, ids[0])["validation"]["recognizers"]
    # Nothing changed yet: the check finds nothing to do.
    assert jobs.check(ds["id"]) == []

    deploy_recognizers(monkeypatch, acme_file)
    queued = jobs.check(ds["id"])  # compares the records with this process's versions; ran in-process
    assert len(queued) == 1
    rv = api.as_("auditor").get(f"/v1/revalidations/{queued[0]}").json()
    assert rv["status"] == "done" and rv["triggers"] == ["pii_engine", "spacy_model", "recognizers"]
    assert rv["total"] == n and rv["changed"] == 3 and rv["unchanged"] == n - 3 and rv["approvals_reset"] == 2
    # Only the added recognizer ran on most examples; the model ran on the three it hit.
    assert rv["plan"]["prefiltered"] == n - 3 and rv["plan"]["rescrubbed"] == 3
    assert rv["target"]["recognizers"] != old

    for i, eid in enumerate(ids):
        ex = get_example(api, eid)
        assert ex["validation"]["recognizers"] == rv["target"]["recognizers"], i
        if i in tokened:
            assert TOKEN not in ex["revision"]["content"]["output"] and "<SECRET>" in ex["revision"]["content"]["output"]
            assert _revisions(eid) == before[i] + 1 and ex["status"] == "pending_review"
            assert ex["validation"]["via"] == "pipeline" and ex["validation"]["reviews"] == {}
        else:
            assert _revisions(eid) == before[i], i
            assert ex["status"] == ("approved" if i in (0, 2) else "pending_review"), i
            assert ex["validation"]["via"] == "revalidation" and ex["validation"]["revalidation_id"] == rv["id"]
    assert get_example(api, ids[0])["validation"]["reviews"] == {"approve": 1}  # kept: same content

    # Redelivered, or checked again: nothing to do, nothing written.
    again = jobs.run(rv["id"])
    assert again["changed"] == 3 and again["done"] == n
    assert jobs.check(ds["id"]) == []
    assert {i: _revisions(e) for i, e in enumerate(ids)} == {i: before[i] + (i in tokened) for i in range(n)}
    page = api.as_("auditor").get(f"/v1/datasets/{ds['id']}/revalidations").json()
    assert [x["id"] for x in page["items"]] == [rv["id"]]
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]


def test_scope_all_rescrubs_everything_and_revises_nothing_unchanged(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, _lines(4, {2}))
    before = {e: _revisions(e) for e in ids}
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/revalidations", json={"scope": "all"})
    assert r.status_code == 202, r.text
    rv = api.as_("auditor").get(f"/v1/revalidations/{r.json()['id']}").json()
    assert rv["status"] == "done" and rv["total"] == 4 and rv["unchanged"] == 4 and rv["changed"] == 0
    assert rv["plan"]["rescrubbed"] == 4
    assert {e: _revisions(e) for e in ids} == before


def test_a_dedup_policy_change_rebuilds_and_restamps(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, _lines(5, set()))
    old = get_example(api, ids[0])["validation"]["dedup_policy_sha256"]
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"dedup_policy": {"threshold": 0.7}})
    assert r.status_code == 200, r.text
    [rv] = api.as_("auditor").get(f"/v1/datasets/{ds['id']}/revalidations").json()["items"]
    assert rv["status"] == "done" and rv["triggers"] == ["dedup_policy"] and rv["plan"]["rebuild_id"]
    assert rv["plan"]["dedup_restamped"] == 5
    v = get_example(api, ids[0])["validation"]
    assert v["dedup_policy_sha256"] != old and v["via"] == "revalidation"


def test_a_newer_request_supersedes_a_running_one(api):
    ds = new_dataset(api)
    ingest(api, ds, _lines(3, set()))
    with session_scope() as s:
        older = Revalidation(dataset_id=uuid.UUID(ds["id"]), status="running", triggers=["recognizers"],
                             requested_by="test", phase="pii", plan={}, target={"recognizers": "x"})
        s.add(older)
        s.flush()
        older_id = str(older.id)
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/revalidations", json={"triggers": ["recognizers"]})
    assert r.status_code == 202
    old = api.as_("auditor").get(f"/v1/revalidations/{older_id}").json()
    assert old["status"] == "superseded" and old["superseded_by"] == r.json()["id"]
    # Its task, redelivered, stops at once: nothing done under it.
    assert jobs.run(older_id)["done"] == 0
    with session_scope() as s:
        assert not s.scalar(select(func.count()).select_from(ExampleValidation)
                            .where(ExampleValidation.revalidation_id == uuid.UUID(older_id)))


def test_bad_input(api):
    ds = new_dataset(api)
    url = f"/v1/datasets/{ds['id']}/revalidations"
    for body, field in (({"triggers": ["moon_phase"]}, "triggers"), ({"scope": "some"}, "scope"),
                        ({"triggers": []}, "triggers"), ({"extra": 1}, "extra")):
        r = api.as_("curator").post(url, json=body)
        assert r.status_code == 422 and field in str(r.json()["error"]["details"]), (body, r.text)
    assert api.as_("reviewer").post(url, json={}).status_code == 403
    assert api.as_("curator").post("/v1/datasets/nope/revalidations", json={}).status_code == 404
    assert api.as_("auditor").get("/v1/revalidations/not-an-id").status_code == 404
    assert api.as_("auditor").get(f"/v1/revalidations/{uuid.uuid4()}").status_code == 404


def test_a_malformed_recognizers_file_is_refused_naming_it(tmp_path):
    from app.pii.engine import ExtraRecognizersInvalid, extra_recognizers

    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "entity_type": "SECRET", "patterns": [{"regex": "("}]}]')
    with pytest.raises(ExtraRecognizersInvalid, match=r"bad\.json.*0\.patterns\.0\.regex"):
        extra_recognizers(bad)
    with pytest.raises(ExtraRecognizersInvalid, match="missing.json"):
        extra_recognizers(tmp_path / "missing.json")


def test_the_cli_starts_checks_and_shows_progress(api):
    import json

    from typer.testing import CliRunner

    from app.cli import app

    ds = new_dataset(api)
    ingest(api, ds, _lines(3, set()))
    run = CliRunner()
    r = run.invoke(app, ["revalidation", "check", ds["name"]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"queued": []}  # nothing changed since the pipeline validated them
    r = run.invoke(app, ["revalidation", "start", ds["name"], "--scope", "all"])
    assert r.exit_code == 0, r.output
    started = json.loads(r.output)
    assert started["status"] == "done" and started["unchanged"] == 3 and started["requested_by"].startswith("cli:")
    r = run.invoke(app, ["revalidation", "status", started["id"]])
    assert r.exit_code == 0 and json.loads(r.output)["id"] == started["id"]
    r = run.invoke(app, ["revalidation", "status", str(uuid.uuid4())])
    assert r.exit_code == 1 and "not found" in r.output
    r = run.invoke(app, ["revalidation", "start", "no-such-dataset"])
    assert r.exit_code == 1 and "not found" in r.output


def test_a_freeze_during_a_revalidation_leaves_out_what_it_has_not_reached(api):
    from tests.factories import freeze, set_status, sql

    ds = new_dataset(api)
    ids = ingest(api, ds, _lines(4, set()))
    set_status(ids, "approved")
    with session_scope() as s:
        s.add(Revalidation(dataset_id=uuid.UUID(ds["id"]), status="running", phase="pii", triggers=["recognizers"],
                           requested_by="test", plan={}, target={"recognizers": "new-set", "pii_engine": "other"}))
    with session_scope() as s:
        s.execute(update(ExampleValidation).where(ExampleValidation.example_id == uuid.UUID(ids[0]))
                  .values(recognizers="new-set"))
    snap = freeze(api, ds, validation_fraction=0.0)
    # Only the recognizer set fired, so only it counts; the one example already brought to it goes in.
    assert snap["counts"]["excluded"]["stale"] == 3 and snap["member_count"] == 1
    sql("UPDATE revalidations SET status = 'done', phase = 'done'")
    s2 = freeze(api, ds, "s2", validation_fraction=0.0)
    assert s2["member_count"] == 4
    md = api.as_("auditor").get(f"/v1/snapshots/{s2['id']}/datasheet").text
    assert "What last validated the members' examples" in md and "| new-set | 1 |" in md, md


def test_an_exact_duplicate_is_recorded_and_prefiltered_like_its_twin(api, acme_file, monkeypatch):
    ds = new_dataset(api)
    a = instruction_line(1)
    twin = {**a, "provenance": {**a["provenance"], "source_ref": "helpdesk-1-copy"}}
    ids = ingest(api, ds, [a, twin])
    dup = get_example(api, ids[1])
    assert dup["status"] == "duplicate" and dup["validation"]["via"] == "pipeline" and dup["last_validated_at"]
    deploy_recognizers(monkeypatch, acme_file)
    [rid] = jobs.check(ds["id"])
    rv = api.as_("auditor").get(f"/v1/revalidations/{rid}").json()
    assert rv["unchanged"] == 2 and rv["plan"]["prefiltered"] == 2 and rv["plan"]["rescrubbed"] == 0
