"""No raw text outside the vault: exact duplicates are scrubbed too, nothing is shown before the scrub,
provenance identifiers are pseudonymised for every role but admin, and errors never echo a value."""

from __future__ import annotations

import uuid

import orjson
import pytest
from sqlalchemy import text

from tests.factories import Api, make_keys, new_dataset, reveal_grant
from tests.support import celery_env

NAME, EMAIL, PHONE = "Margarethe Quixwright", "margarethe.quixwright@example.org", "415-555-0143"
ROW = {"instruction": f"Please write to {NAME} at {EMAIL} or call {PHONE} today.", "output": "Done, I wrote."}
NDJSON = {"Content-Type": "application/x-ndjson"}
ROLES = ("admin", "curator", "reviewer", "trainer", "auditor")


def _ingest(api, ds, rows, **params):
    body = b"\n".join(orjson.dumps(r) for r in rows)
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON,
                                params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _no_canary(blob: str) -> None:
    for value in (NAME, "Quixwright", EMAIL, PHONE):
        assert value not in blob, value


def _revisions_dump() -> str:
    from app.core.db import get_engine

    with get_engine().connect() as conn:
        return " ".join(str(r) for r in conn.execute(text("SELECT content FROM example_revisions")))


def _rerun_migration(revision: str) -> None:
    """Run one data migration's upgrade() again on the current database. (Downgrading to it would walk back
    through every later migration, other domains' included.)"""
    import importlib.util
    from pathlib import Path

    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from app.core.db import get_engine

    (path,) = [p for p in (Path(__file__).resolve().parents[2] / "migrations" / "versions").glob("*.py")
               if f"revision: str = '{revision}'" in p.read_text()]
    spec = importlib.util.spec_from_file_location(f"migration_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with get_engine().begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.upgrade()


def test_an_exact_duplicate_is_scrubbed_with_its_own_findings_and_stays_a_duplicate(api, db):
    ds = new_dataset(api, "instruction")
    _ingest(api, ds, [ROW], source="crm")
    assert _ingest(api, ds, [ROW], source="mail")["exact_duplicates"] == 1
    items = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]
    dup = next(i for i in items if i["status"] == "duplicate")
    canon = next(i for i in items if i["status"] != "duplicate")
    # Scrubbed, with findings on its own revision, and stopped there: not deduplicated or reviewed again.
    assert dup["revision"]["reason"] == "pii_scrub" and dup["stage"] is None
    assert dup["revision"]["content"] == canon["revision"]["content"]
    assert sorted(f["entity_type"] for f in dup["pii_findings"]) == ["EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"]
    assert {f["revision_id"] for f in dup["pii_findings"]} == {dup["revision"]["id"]}
    assert dup["duplicates"][0]["example_id"] == canon["id"]
    assert api.as_("auditor").get(f"/v1/datasets/{ds['id']}").json()["counts"]["duplicate"] == 1
    for role in ROLES:
        _no_canary(api.as_(role).get(f"/v1/examples/{dup['id']}").text)
        _no_canary(api.as_(role).get(f"/v1/lineage/examples/{dup['id']}").text)
    # The table itself: both ingest revisions keep only a vault marker.
    dump = _revisions_dump()
    _no_canary(dump)
    assert dump.count("_pii_vault") == 2
    # The duplicate's own raw text is in the vault, bound to its own row.
    reveal_grant(api, dup["dataset_id"])
    raw = api.as_("admin").get(f"/v1/examples/{dup['id']}/raw").json()
    assert raw["source"] == "vault" and NAME in raw["content"]["instruction"]


@pytest.fixture
def queued(pg, redis_url, monkeypatch):
    """PostgreSQL and a Redis broker with no worker: ingested examples wait at their first stage."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with celery_env(pg, monkeypatch, "plain"), TestClient(create_app()) as client:
        yield Api(client, make_keys())


@pytest.mark.postgres
@pytest.mark.redis
def test_content_is_withheld_from_every_view_until_the_scrub_ran(queued):
    from app.pipeline.jobs import run_stage

    api = queued
    ds = new_dataset(api, "instruction")
    _ingest(api, ds, [{**ROW, "provenance": {"source_ref": "a-1"}}], source="crm")
    _ingest(api, ds, [{**ROW, "provenance": {"source_ref": "b-1"}}], source="mail")
    ids = [i["id"] for i in api.as_("admin").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]]
    assert len(ids) == 2
    for role in ROLES:
        page = api.as_(role).get(f"/v1/datasets/{ds['id']}/examples")
        assert page.status_code == 200
        _no_canary(page.text)
        for item in page.json()["items"]:
            assert item["revision"]["content"] is None and item["revision"]["content_withheld"] == "pii_pending"
        for eid in ids:
            _no_canary(api.as_(role).get(f"/v1/examples/{eid}").text)
            lin = api.as_(role).get(f"/v1/lineage/examples/{eid}")
            assert lin.status_code == 200
            _no_canary(lin.text)
            if lin.json()["content_visible"]:
                rev = lin.json()["revisions"][0]
                assert rev["content"] is None and rev["content_withheld"] == "pii_pending"
    # A snapshot of them would freeze raw text: they are excluded under their own rule.
    r = api.as_("curator").post("/v1/snapshots", json={
        "dataset_id": ds["id"], "name": "too-early",
        "filter": {"statuses": ["ingested", "pending_review"], "include_duplicates": True}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["excluded"]["pii_pending"] == 2

    # The pipeline runs (in this process, as a worker would): now the scrubbed text shows.
    run_stage("quality", ids)
    run_stage("pii", ids)
    for eid in ids:
        ex = api.as_("reviewer").get(f"/v1/examples/{eid}").json()
        assert "content_withheld" not in ex["revision"]
        assert "<PERSON>" in ex["revision"]["content"]["instruction"]
    _no_canary(_revisions_dump())


def test_provenance_identifiers_are_pseudonyms_for_every_role_but_admin(api, db):
    ds = new_dataset(api, "instruction")
    rows = [{"instruction": f"Summarise ticket {i}.", "output": "It is about billing.",
             "provenance": {"source_ref": f"ticket-for-{EMAIL}-{i}", "tags": [f"owner:{NAME}"],
                            "metadata": {"customer": {"email": EMAIL, "phone": PHONE}, "priority": 2}}}
            for i in range(2)]
    _ingest(api, ds, rows, source="helpdesk")
    admin_items = api.as_("admin").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]
    assert {i["provenance"]["source_ref"] for i in admin_items} == {f"ticket-for-{EMAIL}-0", f"ticket-for-{EMAIL}-1"}
    assert admin_items[0]["provenance"]["metadata"]["customer"]["email"] == EMAIL
    for role in ("curator", "reviewer", "trainer", "auditor"):
        r = api.as_(role).get(f"/v1/datasets/{ds['id']}/examples")
        _no_canary(r.text)
        items = r.json()["items"]
        prov = items[0]["provenance"]
        assert prov["source_ref"].startswith("hmac:") and prov["tags"][0].startswith("owner:hmac:")
        # Equal values stay equal (joinable), different values differ, the shape is kept.
        assert items[0]["provenance"]["tags"] == items[1]["provenance"]["tags"]
        assert items[0]["provenance"]["source_ref"] != items[1]["provenance"]["source_ref"]
        assert set(prov["metadata"]) == {"customer", "priority"} and set(prov["metadata"]["customer"]) == {"email", "phone"}
        for eid in (i["id"] for i in items):
            _no_canary(api.as_(role).get(f"/v1/examples/{eid}").text)
            _no_canary(api.as_(role).get(f"/v1/lineage/examples/{eid}").text)
        _no_canary(api.as_(role).get("/v1/lineage/sources/helpdesk").text)
    # The filter still takes the caller's own value.
    r = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples", params={"source_ref": f"ticket-for-{EMAIL}-1"})
    assert len(r.json()["items"]) == 1


def test_an_erasure_request_keeps_no_identifier_in_clear(api, db):
    ds = new_dataset(api, "instruction")
    ref = f"ticket-for-{EMAIL}"
    _ingest(api, ds, [{"instruction": "Summarise the ticket.", "output": "Billing.",
                       "provenance": {"source_ref": ref, "metadata": {"email": EMAIL}}}], source="helpdesk")
    for selector in ({"source_refs": [ref]}, {"metadata": {"email": EMAIL}}):
        r = api.as_("curator").post("/v1/erasure-requests", json={"selector": selector, "reason": "subject request",
                                                                    "dry_run": True})
        assert r.status_code == 201, r.text
        _no_canary(r.text)
    for role in ("curator", "auditor", "admin"):
        _no_canary(api.as_(role).get("/v1/erasure-requests").text)
    from app.core.db import get_engine

    with get_engine().connect() as conn:
        for table in ("erasure_requests", "audit_events"):
            _no_canary(" ".join(str(r) for r in conn.execute(text(f"SELECT * FROM {table}"))))


def test_errors_name_the_field_never_the_value(api, db):
    ds = new_dataset(api, "instruction")
    body = _ingest(api, ds, [
        {"instruction": "a", "output": "b", "provenance": {"collected_at": NAME}},
        {"instruction": "c", "output": "d", "provenance": {"source_ref": EMAIL}},
        {"instruction": "c", "output": "DIFFERENT", "provenance": {"source_ref": EMAIL}},
    ])
    by_line = {e["line"]: e for e in body["errors"]}
    assert by_line[1]["field"] == "provenance.collected_at" and "ISO 8601" in by_line[1]["message"]
    assert by_line[3]["code"] == "source_ref_conflict" and by_line[3]["field"] == "provenance.source_ref"
    _no_canary(orjson.dumps(body).decode())
    again = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", headers=NDJSON, content=orjson.dumps(
        {"instruction": "c", "output": "OTHER", "provenance": {"source_ref": EMAIL}}))
    assert again.status_code == 422 and again.json()["errors"][0]["code"] == "source_ref_conflict"
    _no_canary(again.text)
    for role in ROLES:
        _no_canary(api.as_(role).get(f"/v1/ingest-batches/{body['batch_id']}").text)
    r = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples", params={"status": EMAIL})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "status"
    _no_canary(r.text)


def test_duplicates_ingested_before_the_fix_are_sent_back_to_the_scrub(api, db, monkeypatch):
    """The pii03 data migration: a duplicate parked with its raw ingest revision goes back to the pii stage,
    is withheld at once, and the sweeper has it scrubbed."""
    from app.examples import ingest
    from app.pipeline import jobs as pipeline
    from app.pipeline import stages

    ds = new_dataset(api, "instruction")
    _ingest(api, ds, [ROW], source="crm")
    # The old ingest: the duplicate parked outside the pipeline, never scrubbed.
    with monkeypatch.context() as m:
        m.setattr(stages, "SCRUB_STAGE", None)
        m.setattr(ingest.stages, "SCRUB_STAGE", None)
        _ingest(api, ds, [ROW], source="mail")
    dump = _revisions_dump()
    assert NAME in dump  # the state the migration repairs
    items = api.as_("admin").get(f"/v1/datasets/{ds['id']}/examples", params={"status": "duplicate"}).json()["items"]
    dup_id = items[0]["id"]

    _rerun_migration("pii03")
    ex = api.as_("reviewer").get(f"/v1/examples/{dup_id}").json()
    assert ex["stage"] == "pii" and ex["status"] == "duplicate"
    assert ex["revision"]["content"] is None and ex["revision"]["content_withheld"] == "pii_pending"

    from app.core.db import session_scope

    with session_scope() as s:  # a legacy row: untouched for long, so the sweeper's idle pass takes it
        s.execute(text("UPDATE examples SET updated_at = :t WHERE status = 'duplicate'"),
                  {"t": "2026-01-01 00:00:00+00:00"})
    assert pipeline.sweep() >= 1  # embedded: the stage runs in-process
    ex = api.as_("reviewer").get(f"/v1/examples/{dup_id}").json()
    assert ex["stage"] is None and ex["status"] == "duplicate" and ex["revision"]["reason"] == "pii_scrub"
    _no_canary(_revisions_dump())
    assert uuid.UUID(dup_id)


def test_access_log_lines_keep_parameter_names_not_values(caplog):
    import logging

    from app.main import create_app

    create_app()
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        # Exactly what uvicorn's protocol classes log for a request.
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET",
                                                 f"/v1/datasets/d/examples?source_ref={EMAIL}&limit=5", "1.1", 200)
    assert '"GET /v1/datasets/d/examples?source_ref=*&limit=* HTTP/1.1" 200' in caplog.text
    _no_canary(caplog.text)


def test_line_errors_stored_before_the_fix_lose_their_values(api, db):
    """The pii04 data migration: stored line errors that quoted a value get today's message."""
    from app.core.db import session_scope
    from app.models.example import IngestBatch

    ds = new_dataset(api, "instruction")
    body = _ingest(api, ds, [{"instruction": "a", "output": "b", "provenance": {"collected_at": NAME}},
                             {"instruction": "c", "output": "d", "provenance": {"source_ref": EMAIL}},
                             {"instruction": "c", "output": "e", "provenance": {"source_ref": EMAIL}}])
    eid = "01a23a91-3eea-738b-bc9d-a3c4401827c1"
    old = [{"line": 1, "code": "invalid", "field": "provenance.collected_at",
            "message": f"collected_at {NAME!r} is not an ISO 8601 date or datetime"},
           {"line": 3, "code": "source_ref_conflict", "field": "provenance.source_ref",
            "message": f"source_ref {EMAIL!r} appears earlier in this batch with different content"},
           {"line": 4, "code": "source_ref_conflict", "field": "provenance.source_ref",
            "message": f"source_ref {EMAIL!r} was already ingested with different content (example {eid}); "
                       "send an edit instead"},
           {"line": 5, "code": "invalid_json", "message": "not valid JSON: unexpected end of data"}]
    with session_scope() as s:  # what the old code stored
        s.get(IngestBatch, uuid.UUID(body["batch_id"])).errors = old
    assert NAME in api.as_("reviewer").get(f"/v1/ingest-batches/{body['batch_id']}").text

    _rerun_migration("pii04")
    got = api.as_("reviewer").get(f"/v1/ingest-batches/{body['batch_id']}").json()["errors"]
    _no_canary(orjson.dumps(got).decode())
    assert [e["message"] for e in got] == [
        "collected_at is not an ISO 8601 date or datetime",
        "source_ref appears earlier in this batch with different content",
        f"source_ref was already ingested with different content (example {eid}); send an edit instead",
        "not valid JSON: unexpected end of data"]
    assert [(e["line"], e["code"]) for e in got] == [(e["line"], e["code"]) for e in old]


def test_erasure_requests_filed_before_the_fix_lose_their_identifiers(api, db):
    """The pii05 data migration: a selector stored as given gets the pseudonymised form new requests get."""
    from app.core.db import session_scope
    from app.models.lineage import ErasureRequest

    ds = new_dataset(api, "instruction")
    ref = f"ticket-for-{EMAIL}"
    _ingest(api, ds, [{"instruction": "Summarise the ticket.", "output": "Billing.",
                       "provenance": {"source_ref": ref, "metadata": {"email": EMAIL, "n": 7, "vip": True}}}],
            source="helpdesk")
    made = {}
    for selector in ({"source_refs": [ref, "other-ref"]}, {"metadata": {"email": EMAIL, "n": 7, "vip": True}}):
        r = api.as_("curator").post("/v1/erasure-requests", json={"selector": selector, "reason": "subject",
                                                                    "dry_run": True})
        assert r.status_code == 201, r.text
        made[r.json()["id"]] = (r.json()["selector"], selector)
    with session_scope() as s:  # what the old code stored: the selector as given
        for rid, (_, raw) in made.items():
            s.get(ErasureRequest, uuid.UUID(rid)).selector = raw
    assert EMAIL in api.as_("auditor").get("/v1/erasure-requests").text

    _rerun_migration("pii05")
    _no_canary(api.as_("auditor").get("/v1/erasure-requests").text)
    for rid, (stored_now, _) in made.items():
        assert api.as_("curator").get(f"/v1/erasure-requests/{rid}").json()["selector"] == stored_now
    _rerun_migration("pii05")  # idempotent: pseudonyms are not pseudonymised again
    for rid, (stored_now, _) in made.items():
        assert api.as_("curator").get(f"/v1/erasure-requests/{rid}").json()["selector"] == stored_now


def test_a_failed_statement_does_not_carry_its_values_into_the_logs(db):
    """The 500 handler and the workers log exceptions; SQLAlchemy's message would include the bound values."""
    from sqlalchemy.exc import DBAPIError

    from app.core.db import session_scope

    with pytest.raises(DBAPIError) as info, session_scope() as s:
        s.execute(text("INSERT INTO no_such_table (x) VALUES (:v)"), {"v": f"{NAME} {EMAIL}"})
    assert "no_such_table" in str(info.value)
    _no_canary(str(info.value))


def test_a_snapshot_keeps_its_tag_filter_as_pseudonyms(api, db):
    """A curator filters by a tag that names a person: the snapshot's view, datasheet and audit event show
    the tag as every non-admin reads it, and the filter still selected by the real value."""
    from tests.factories import ingest, instruction_line, set_status

    ds = new_dataset(api, "instruction")
    ids = ingest(api, ds, [instruction_line(i, tags=[f"owner:{NAME}"] if i < 3 else ["owner:other"])
                           for i in range(6)])
    set_status(ids, "approved")
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "owned",
                                                        "filter": {"tags": [f"owner:{NAME}"]}})
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["member_count"] == 3
    _no_canary(r.text)
    shown = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}").json()["filter"]["tags"]
    reader_view = api.as_("reviewer").get(f"/v1/examples/{ids[0]}").json()["provenance"]["tags"]
    assert shown == reader_view and shown[0].startswith("owner:hmac:")
    for role in ("curator", "trainer", "auditor"):
        _no_canary(api.as_(role).get(f"/v1/snapshots/{snap['id']}").text)
        _no_canary(api.as_(role).get(f"/v1/snapshots/{snap['id']}/datasheet").text)
        _no_canary(api.as_(role).get(f"/v1/snapshots/{snap['id']}/manifest.json").text)
    from app.core.db import get_engine

    with get_engine().connect() as conn:
        for table in ("snapshots", "audit_events"):
            _no_canary(" ".join(str(r) for r in conn.execute(text(f"SELECT * FROM {table}"))))
