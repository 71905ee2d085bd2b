"""Lineage answers, erasure that reaches the models, and the audit checkpoint, on both databases."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select, text

from app.core.db import session_scope
from app.lineage import training as tr
from app.models.example import Example, ExampleRevision
from app.models.review import Review
from tests.factories import export_records, freeze, ingest, instruction_line, new_dataset, set_status
from tests.lineage.conftest import register_model


def _line(i: int, *, user: str, source: str = "helpdesk", license: str = "CC-BY-4.0", tags=None) -> dict:
    ln = instruction_line(i, source=source, license=license, tags=tags or [])
    ln["provenance"]["metadata"] = {"user_id": user}
    return ln


def _world(api, n: int = 8):
    """n approved examples (two of them by user u1, one NC-licensed and tagged), a review on each, a
    snapshot and model m v1 (served by `production`) trained on all of it."""
    ds = new_dataset(api)
    lines = [_line(i, user="u1" if i < 2 else f"u{i}", source="forum" if i % 2 else "helpdesk",
                   license="CC-BY-NC-4.0" if i == 3 else "CC-BY-4.0", tags=["math"] if i == 3 else [])
             for i in range(n)]
    ids = ingest(api, ds, lines)
    set_status(ids, "approved")
    with session_scope() as s:
        revs = dict(s.execute(select(Example.id, Example.current_revision_id)).all())
        for k, eid in enumerate(ids):
            s.add(Review(example_id=uuid.UUID(eid), dataset_id=uuid.UUID(ds["id"]), revision_id=revs[uuid.UUID(eid)],
                         reviewer="alice#0000aaaa" if k % 2 == 0 else "bob#0000bbbb", reviewer_key_id=uuid.uuid4(),
                         decision="approve", reason_code=None))
    snap = freeze(api, ds, "s1", validation_fraction=0.0)
    members = _members(snap["id"])
    mv = register_model(snapshot_id=snap["id"], members=members, aliases=("production",))
    return ds, ids, snap, mv


def _members(snapshot_id: str) -> list[tuple[str, str]]:
    with session_scope() as s:
        from app.models.snapshot import SnapshotMember

        return [(str(e), str(r)) for e, r in s.execute(
            select(SnapshotMember.example_id, SnapshotMember.revision_id)
            .where(SnapshotMember.snapshot_id == uuid.UUID(snapshot_id)))]


def test_example_lineage_end_to_end(api, training):
    _ds, ids, snap, mv = _world(api)
    r = api.as_("auditor").get(f"/v1/lineage/examples/{ids[0]}", params={"include_audit": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["example"]["id"] == ids[0] and body["example"]["provenance"]["source"] == "helpdesk"
    assert body["revisions"] and all("content_sha256" in x and "author" in x and "reason" in x
                                     for x in body["revisions"])
    assert body["reviews"][0]["reviewer"] == "alice#0000aaaa" and body["reviews"][0]["decision"] == "approve"
    assert body["snapshots"] == [{**body["snapshots"][0], "id": snap["id"], "manifest_sha256": snap["manifest_sha256"]}]
    [m] = body["model_versions"]
    assert (m["name"], m["version"], m["run_id"], m["status"]) == ("m", 1, mv["run_id"], "candidate")
    assert m["tokens"] >= 100 and m["epochs"] == 2 and m["aliases"] == ["production"]
    assert body["training_runs"][0]["id"] == mv["run_id"]
    assert body["erasure"] is None and body["warnings"] == []
    assert "pii_findings" in body and "quality_flags" in body and "duplicates" in body
    # The audit events behind the answer, each re-hashed.
    assert body["audit_events"] and all(e["hash_ok"] for e in body["audit_events"])
    assert any(e["action"] == "snapshot.created" for e in body["audit_events"])
    # Content for people who may read it; hashes only for a trainer key.
    assert "content" in body["revisions"][0]
    t = api.as_("trainer").get(f"/v1/lineage/examples/{ids[0]}").json()
    assert "content" not in t["revisions"][0] and t["content_visible"] is False
    assert api.as_("auditor").get(f"/v1/lineage/examples/{uuid.uuid4()}").status_code == 404
    assert api.as_("auditor").get("/v1/lineage/examples/not-a-uuid").status_code == 404


def test_model_lineage_summary_and_filtered_pages(api, training):
    _ds, ids, snap, mv = _world(api)
    r = api.as_("auditor").get("/v1/lineage/models/m/versions/1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["snapshot"]["manifest_sha256"] == snap["manifest_sha256"]
    assert body["run"]["id"] == mv["run_id"] and body["run"]["hyperparameters"]["lora_r"] == 8
    summ = body["summary"]
    assert summ["examples"] == 8 and summ["by_source"] == {"helpdesk": 4, "forum": 4}
    assert summ["by_license"] == {"CC-BY-4.0": 7, "CC-BY-NC-4.0": 1}
    assert summ["by_reviewer"] == {"alice#0000aaaa": {"approve": 4}, "bob#0000bbbb": {"approve": 4}}
    assert api.as_("auditor").get("/v1/lineage/models/m/versions/9").status_code == 404
    assert api.as_("auditor").get("/v1/lineage/models/nope/versions/1").status_code == 404

    seen, cursor = [], None
    while True:
        page = api.as_("auditor").get("/v1/lineage/models/m/versions/1/examples",
                                      params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 8 and len({x["example_id"] for x in seen}) == 8
    assert {"example_id", "revision_id", "source", "source_ref", "tokens", "epochs"} <= set(seen[0])
    forum = api.as_("auditor").get("/v1/lineage/models/m/versions/1/examples", params={"source": "forum"}).json()
    assert len(forum["items"]) == 4 and {x["source"] for x in forum["items"]} == {"forum"}
    nc = api.as_("auditor").get("/v1/lineage/models/m/versions/1/examples",
                                params={"license": "CC-BY-NC-4.0"}).json()["items"]
    assert [x["example_id"] for x in nc] == [ids[3]]
    tagged = api.as_("auditor").get("/v1/lineage/models/m/versions/1/examples", params={"tag": "math"}).json()
    assert [x["example_id"] for x in tagged["items"]] == [ids[3]]
    alice = api.as_("auditor").get("/v1/lineage/models/m/versions/1/examples", params={"reviewer": "alice"}).json()
    assert len(alice["items"]) == 4


def test_reverse_lookups(api, training):
    _ds, _ids, snap, _mv = _world(api)
    src = api.as_("auditor").get("/v1/lineage/sources/forum").json()
    assert src["counts"]["examples"] == 4 and len(src["examples"]["items"]) == 4
    assert [s["id"] for s in src["snapshots"]] == [snap["id"]]
    assert [(m["name"], m["version"]) for m in src["model_versions"]] == [("m", 1)]
    lic = api.as_("auditor").get("/v1/lineage/licenses/CC-BY-NC-4.0").json()
    assert [(m["name"], m["version"], m["matching_examples"]) for m in lic["model_versions"]] == [("m", 1, 1)]
    assert api.as_("auditor").get("/v1/lineage/licenses/proprietary").json()["model_versions"] == []
    rv = api.as_("auditor").get("/v1/lineage/reviewers/bob").json()
    assert rv["counts"]["examples"] == 4 and rv["decisions"] == {"approve": 4}
    assert [(m["name"], m["version"]) for m in rv["model_versions"]] == [("m", 1)]


def _erase(api, body: dict, role: str = "curator", expect: int = 201) -> dict:
    r = api.as_(role).post("/v1/erasure-requests", json=body)
    assert r.status_code == expect, r.text
    return r.json()


def test_erasure_reaches_snapshots_and_models_and_replays(api, training):
    _ds, ids, snap, mv = _world(api)
    with session_scope() as s:
        before = {str(r.id): r.content_sha256 for r in s.scalars(select(ExampleRevision))}
    sel = {"metadata": {"user_id": "u1"}}
    preview = _erase(api, {"selector": sel, "reason": "Art. 17 request #42", "dry_run": True})
    assert preview["status"] == "previewed" and preview["affected"]["examples"] == 2
    assert preview["affected"]["model_versions"][0]["name"] == "m"
    assert preview["affected"]["aliases"][0]["alias"] == "production"
    assert api.as_("auditor").get(f"/v1/lineage/examples/{ids[0]}").json()["erasure"] is None

    done = _erase(api, {"selector": sel, "reason": "Art. 17 request #42"})
    assert done["status"] == "completed" and done["affected"]["examples"] == 2
    assert [s["id"] for s in done["affected"]["snapshots"]] == [snap["id"]]
    assert [(m["name"], m["version"]) for m in done["affected"]["model_versions"]] == [("m", 1)]
    assert done["affected"]["aliases"] == [{"name": "m", "alias": "production", "version": 1,
                                            "model_version_id": mv["model_version_id"]}]
    assert any("TAINTED" in w for w in done["warnings"])
    assert sorted(done["example_ids"]) == sorted(ids[:2])

    lin = api.as_("auditor").get(f"/v1/lineage/examples/{ids[0]}").json()
    assert lin["example"]["status"] == "erased" and lin["erasure"]["request_id"] == done["id"]
    assert all(r["erased"] and r.get("content") is None for r in lin["revisions"])
    assert lin["model_versions"][0]["status"] == "tainted" and lin["model_versions"][0]["tainted_by"] == [done["id"]]
    assert any("TAINTED" in w for w in lin["warnings"])
    with session_scope() as s:
        after = {str(r.id): r.content_sha256 for r in s.scalars(select(ExampleRevision))}
        assert s.execute(select(tr.model_versions.c.status)).scalar_one() == "tainted"
    assert after == before  # tombstones keep every content hash
    ml = api.as_("auditor").get("/v1/lineage/models/m/versions/1").json()
    assert ml["model_version"]["status"] == "tainted" and ml["snapshot"]["contains_erased"] is True
    assert ml["warnings"]
    # Exports omit erased members from now on.
    recs, _ = export_records(api, snap["id"])
    assert len(recs) == 6 and not {r.get("example_id") for r in recs} & set(ids[:2])
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True

    again = _erase(api, {"selector": sel, "reason": "Art. 17 request #42 (resent)"})
    assert again["id"] == done["id"] and again["affected"] == done["affected"] and again["replayed"] is True
    got = api.as_("auditor").get(f"/v1/erasure-requests/{done['id']}").json()
    assert got["affected"] == done["affected"] and got["status"] == "completed"


def test_erasure_bad_input(api, training):
    _ds, _ids, _snap, _mv = _world(api)
    nothing = _erase(api, {"selector": {"source_refs": ["no-such-ref"]}, "reason": "r"}, expect=200)
    assert nothing["affected"] == {"examples": 0, "snapshots": [], "model_versions": [], "aliases": []}
    broad = api.as_("curator").post("/v1/erasure-requests",
                                    json={"selector": {"source": "forum", "metadata": {"user_id": "u3"}},
                                          "reason": "r"})
    assert broad.status_code == 201, broad.text
    r = api.as_("curator").post("/v1/erasure-requests",
                                json={"selector": {"source_refs": [f"helpdesk-{i}" for i in range(0, 8, 2)]
                                                   + [f"forum-{i}" for i in range(5, 8, 2)]}, "reason": "r"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "confirmation_required", r.text
    ok = _erase(api, {"selector": {"source_refs": ["helpdesk-0", "helpdesk-2", "helpdesk-4", "helpdesk-6",
                                                   "forum-5", "forum-7"]}, "reason": "r", "confirm": True})
    assert ok["affected"]["examples"] == 6
    assert api.as_("curator").post("/v1/erasure-requests", json={"selector": {"raw_text_contains": "task 1?"},
                                                                  "reason": "r"}).status_code == 403
    assert api.as_("auditor").post("/v1/erasure-requests", json={"selector": {"source_refs": ["x"]},
                                                                  "reason": "r"}).status_code == 403
    assert api.as_("curator").post("/v1/erasure-requests", json={"selector": {}, "reason": "r"}).status_code == 422
    assert api.as_("auditor").get(f"/v1/erasure-requests/{uuid.uuid4()}").status_code == 404
    assert api.as_("auditor").get("/v1/erasure-requests").json()["items"]


def test_raw_text_selector_searches_raw_content(api, training):
    ds, ids, _snap, _mv = _world(api)
    hit = _erase(api, {"selector": {"raw_text_contains": "HOW DO I DO TASK 5?", "dataset_id": ds["id"]},
                       "reason": "found in raw text"}, role="admin")
    assert hit["example_ids"] == [ids[5]]
    # The needle is personal data itself: only its hash is stored.
    assert "raw_text_contains" not in hit["selector"] and "raw_text_contains_sha256" in hit["selector"]


def test_erasure_without_training_tables(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, [_line(i, user="zz") for i in range(3)])
    done = _erase(api, {"selector": {"source_refs": ["helpdesk-1"]}, "reason": "r"})
    assert done["example_ids"] == [ids[1]] and done["affected"]["model_versions"] == []


def test_audit_verification_is_incremental(api):
    from app.audit import service as audit

    def events(n):
        with session_scope() as s:
            for i in range(n):
                audit.record(s, actor="t", action="test.event", entity_type="t", entity_id=i, payload={"i": i})

    events(5)
    v = api.as_("auditor").get("/v1/audit/verify", params={"mode": "incremental"}).json()
    assert v["ok"] and v["events"] == 5 and v["verified_from"] == 0 and v["checked"] == 5
    events(3)
    v = api.as_("auditor").get("/v1/audit/verify", params={"mode": "incremental"}).json()
    assert v["ok"] and v["events"] == 8 and v["verified_from"] == 5 and v["checked"] == 3
    from app.core.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    # Only re-hashing an old row shows its edit: the full walk (the default at this size) does.
    assert api.as_("auditor").get("/v1/audit/verify", params={"mode": "incremental"}).json()["ok"] is True
    full = api.as_("auditor").get("/v1/audit/verify").json()
    assert full["ok"] is False and full["first_bad_event"] == 2 and full["mode"] == "full"
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 8"))
    inc = api.as_("auditor").get("/v1/audit/verify", params={"mode": "incremental"}).json()
    assert inc["ok"] is False and inc["first_bad_event"] == 8


def test_auditor_reads_everything_and_changes_nothing(api, training):
    _ds, ids, _snap, _mv = _world(api, n=3)
    for path in (f"/v1/lineage/examples/{ids[0]}", "/v1/lineage/models/m/versions/1",
                 "/v1/lineage/models/m/versions/1/examples", "/v1/lineage/sources/helpdesk",
                 "/v1/lineage/licenses/CC-BY-4.0", "/v1/lineage/reviewers/alice", "/v1/erasure-requests",
                 "/v1/audit/verify"):
        assert api.as_("auditor").get(path).status_code == 200, path
    r = api.as_("auditor").post("/v1/erasure-requests", json={"selector": {"source_refs": ["helpdesk-0"]},
                                                                "reason": "r", "dry_run": True})
    assert r.status_code == 403
    assert api.as_("reviewer").get("/v1/erasure-requests").status_code == 403


def test_cli_prints_a_readable_tree(api, training):
    import os
    import subprocess
    import sys
    from pathlib import Path

    _ds, ids, snap, _mv = _world(api, n=3)
    _erase(api, {"selector": {"source_refs": ["helpdesk-2"]}, "reason": "Art. 17"})
    root = Path(__file__).resolve().parents[2]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "app.cli", "lineage", *args], cwd=root, env={**os.environ},
                              capture_output=True, text=True, timeout=300, check=False)

    r = cli("example", ids[0])
    assert r.returncode == 0, r.stderr
    for needle in ("provenance", "revisions", "reviews", "approve by alice#0000aaaa", "snapshots", "s1",
                   snap["manifest_sha256"][:12], "model versions", "m v1", "tainted", "production"):
        assert needle in r.stdout, (needle, r.stdout)
    erased = cli("example", ids[2])
    assert "erased by request" in erased.stdout
    assert cli("example", str(uuid.uuid4())).returncode == 4
    js = cli("example", ids[0], "--json", "--audit")
    assert json.loads(js.stdout)["audit_events"]
    m = cli("model", "m", "1")
    assert m.returncode == 0 and "TAINTED" in m.stdout and "3 examples" in m.stdout, m.stdout
