"""Snapshots on both databases: freeze, exclusions, determinism, content addressing, exports, erasure,
diff, datasheet, roles and bad input. Examples are put in the state a test needs with SQL: the review
workflow is another component's and has its own tests."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from tests.factories import (
    approved_dataset,
    export_records,
    freeze,
    ingest,
    instruction_line,
    new_dataset,
    set_status,
    sql,
    stdlib_content_sha256,
    stdlib_manifest,
)


def test_freeze_counts_manifest_and_export_agree(api):
    ds, ids = approved_dataset(api, 30)
    set_status(ids[:4], "pending_review")
    set_status(ids[4:6], "duplicate")
    set_status(ids[6:7], "erased")
    snap = freeze(api, ds, validation_fraction=0.2, seed=7)
    c = snap["counts"]
    assert c["train"] + c["validation"] == 23 == snap["member_count"]
    assert c["excluded"]["status"] == 4 and c["excluded"]["duplicate"] == 2 and c["excluded"]["erased"] == 1
    assert c["considered"] == 30

    recs, r = export_records(api, snap["id"])
    assert len(recs) == 23
    assert {rec["example_id"] for rec in recs} == set(ids[7:])
    for rec in recs:
        assert set(rec) == {"revision_id", "example_id", "split", "format", "content", "content_sha256"}
        assert rec["format"] == "instruction"
        assert stdlib_content_sha256(rec["content"]) == rec["content_sha256"]
    # The trainer's formula, recomputed from the export alone, is the snapshot's identity.
    assert stdlib_manifest(recs) == snap["manifest_sha256"] == r.headers["X-Manifest-SHA256"]
    assert r.headers["X-Export-Manifest-SHA256"] == snap["manifest_sha256"]
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [rec["example_id"] for rec in recs] == sorted(rec["example_id"] for rec in recs)

    got = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}").json()
    assert got["manifest_sha256"] == snap["manifest_sha256"] and got["contains_erased"] is False
    listed = api.as_("trainer").get("/v1/snapshots", params={"dataset": ds["id"]}).json()["items"]
    assert [s["id"] for s in listed] == [snap["id"]]

    for split in ("train", "validation"):
        part, r = export_records(api, snap["id"], split=split)
        assert {p["split"] for p in part} <= {split} and len(part) == c[split]
        assert stdlib_manifest(part) == r.headers["X-Export-Manifest-SHA256"] == snap["split_manifests"][split]
        assert r.headers["X-Manifest-SHA256"] == snap["manifest_sha256"]


def test_same_content_same_hash_and_split_is_stable_when_examples_are_added(api):
    from app.snapshots.repository import split_h32, validation_threshold

    ds, _ = approved_dataset(api, 40)
    a = freeze(api, ds, "a", validation_fraction=0.25, seed="s1")
    b = freeze(api, ds, "b", validation_fraction=0.25, seed="s1")
    assert a["manifest_sha256"] == b["manifest_sha256"] and a["id"] != b["id"]
    c = freeze(api, ds, "c", validation_fraction=0.25, seed="other")
    assert c["member_count"] == 40

    # The split is a pure function of (example id, seed): the reference implementation agrees.
    recs, _ = export_records(api, a["id"])
    for rec in recs:
        want = "validation" if split_h32(rec["example_id"], "s1") < validation_threshold(0.25) else "train"
        assert rec["split"] == want
    before = {rec["example_id"]: rec["split"] for rec in recs}

    more = ingest(api, ds, [instruction_line(i) for i in range(40, 70)])
    set_status(more, "approved")
    d = freeze(api, ds, "d", validation_fraction=0.25, seed="s1")
    assert d["member_count"] == 70 and d["manifest_sha256"] != a["manifest_sha256"]
    after = {rec["example_id"]: rec["split"] for rec in export_records(api, d["id"])[0]}
    assert all(after[e] == s for e, s in before.items())  # nobody moved

    # Same contents in another dataset (other example ids) with no validation split: same hash.
    ds2, _ = approved_dataset(api, 40)
    e = freeze(api, ds2, "e", validation_fraction=0.0)
    f = freeze(api, ds, "f", validation_fraction=0.0, filter={"sources": ["helpdesk"]})
    g = freeze(api, ds2, "g", validation_fraction=0.0, seed=99)
    assert e["manifest_sha256"] == g["manifest_sha256"]
    assert f["manifest_sha256"] != e["manifest_sha256"]  # ds has 70 members, ds2 40


def test_stratified_split_gives_each_stratum_its_share(api):
    ds = new_dataset(api)
    lines = [instruction_line(i, tags=["lang:en" if i < 30 else "lang:de", "topic:x"]) for i in range(40)]
    lines += [instruction_line(i, tags=["topic:y"]) for i in range(40, 45)]
    set_status(ingest(api, ds, lines), "approved")
    snap = freeze(api, ds, validation_fraction=0.2, seed=1, stratify_by="lang")
    recs, _ = export_records(api, snap["id"])
    by_tag: dict[str, list[str]] = {}
    tags = {ln["provenance"]["source_ref"]: ln["provenance"]["tags"] for ln in lines}
    ex_ref = {}
    for rec in recs:
        ex = api.as_("admin").get(f"/v1/examples/{rec['example_id']}").json()  # refs as stored: admin only
        ex_ref[rec["example_id"]] = ex["provenance"]["source_ref"]
        lang = next((t for t in tags[ex_ref[rec["example_id"]]] if t.startswith("lang:")), "")
        by_tag.setdefault(lang, []).append(rec["split"])
    assert by_tag["lang:en"].count("validation") == 6  # round(0.2 * 30)
    assert by_tag["lang:de"].count("validation") == 2  # round(0.2 * 10)
    assert by_tag[""].count("validation") == 1  # round(0.2 * 5)
    again = freeze(api, ds, "again", validation_fraction=0.2, seed=1, stratify_by="lang")
    assert again["manifest_sha256"] == snap["manifest_sha256"]


def test_filters_and_exclusion_rules(api):
    ds = new_dataset(api)
    lines = [instruction_line(i, source="zendesk" if i % 2 else "crm", license="MIT" if i < 10 else "CC-BY-4.0",
                              tags=["gold"] if i % 5 == 0 else [],
                              collected_at=f"2026-0{1 + i % 6}-15T00:00:00Z") for i in range(20)]
    ids = ingest(api, ds, lines)
    set_status(ids, "approved")
    snap = freeze(api, ds, "src", filter={"sources": ["zendesk"]})
    assert snap["member_count"] == 10 and snap["counts"]["excluded"]["source"] == 10
    snap = freeze(api, ds, "lic", filter={"licenses": ["MIT"], "sources": ["crm"]})
    assert snap["member_count"] == 5
    assert snap["counts"]["excluded"]["source"] == 10 and snap["counts"]["excluded"]["license"] == 5
    snap = freeze(api, ds, "tags", filter={"tags": ["gold"]})
    assert snap["member_count"] == 4 and snap["counts"]["excluded"]["tags"] == 16
    snap = freeze(api, ds, "when", filter={"collected_after": "2026-03-01T00:00:00Z",
                                           "collected_before": "2026-05-01T00:00:00Z"})
    assert snap["member_count"] == 6 and snap["counts"]["excluded"]["collected_at"] == 14
    assert snap["stats"]["collected_at"]["min"].startswith("2026-03-15")
    set_status(ids[:5], "pending_review")
    snap = freeze(api, ds, "statuses", filter={"statuses": ["approved", "pending_review"]})
    assert snap["member_count"] == 20
    # The non-canonical side of a duplicate link is out unless asked for, even when approved.
    sql("INSERT INTO duplicate_links (id, dataset_id, example_id, canonical_example_id, method, similarity, "
        "created_by, created_at) VALUES (:id, :ds, :ex, :canon, 'minhash', 0.9, 'test', CURRENT_TIMESTAMP)",
        id=_db_uuid(uuid.uuid4()), ds=_db_uuid(ds["id"]), ex=_db_uuid(ids[10]), canon=_db_uuid(ids[11]))
    snap = freeze(api, ds, "nodup")
    assert snap["counts"]["excluded"]["duplicate"] == 1 and snap["member_count"] == 14
    snap = freeze(api, ds, "withdup", filter={"include_duplicates": True})
    assert snap["counts"]["excluded"]["duplicate"] == 0 and snap["member_count"] == 15


def _db_uuid(value) -> str:
    """UUIDs as the current database stores them (SQLite: 32 hex digits)."""
    from app.core.config import get_settings

    u = uuid.UUID(str(value))
    return u.hex if get_settings().is_sqlite else str(u)


def test_eval_contamination_is_excluded_unless_allowed(api):
    ds, ids = approved_dataset(api, 6)
    ev = new_dataset(api, is_eval_set=True)
    ev_ids = ingest(api, ev, [instruction_line(100, source="bench")])
    sql("INSERT INTO dedup_eval_hits (id, dataset_id, example_id, eval_dataset_id, eval_example_id, similarity, "
        "created_at) VALUES (:id, :ds, :ex, :evds, :evex, 0.95, CURRENT_TIMESTAMP)",
        id=_db_uuid(uuid.uuid4()), ds=_db_uuid(ds["id"]), ex=_db_uuid(ids[0]), evds=_db_uuid(ev["id"]),
        evex=_db_uuid(ev_ids[0]))
    snap = freeze(api, ds, "clean")
    assert snap["counts"]["excluded"]["contaminates_eval"] == 1 and snap["member_count"] == 5
    snap = freeze(api, ds, "dirty", filter={"include_contaminating": True})
    assert snap["member_count"] == 6
    # A curator's allow_eval_overlap decision lifts exactly that hit.
    sql("INSERT INTO dedup_decisions (id, dataset_id, example_id, other_example_id, decision, decided_by, created_at) "
        "VALUES (:id, :ds, :ex, :evex, 'allow_eval_overlap', 'curator', CURRENT_TIMESTAMP)",
        id=_db_uuid(uuid.uuid4()), ds=_db_uuid(ds["id"]), ex=_db_uuid(ids[0]), evex=_db_uuid(ev_ids[0]))
    snap = freeze(api, ds, "allowed")
    assert snap["counts"]["excluded"]["contaminates_eval"] == 0 and snap["member_count"] == 6


def test_min_approvals_counts_distinct_reviewers_of_the_frozen_revision(api):
    ds, ids = approved_dataset(api, 3)
    for i, n in ((0, 2), (1, 1)):
        ex = api.as_("curator").get(f"/v1/examples/{ids[i]}").json()
        for k in range(n):
            sql("INSERT INTO reviews (id, example_id, dataset_id, revision_id, reviewer, reviewer_key_id, decision, "
                "resolves_escalation, created_at) VALUES (:id, :ex, :ds, :rev, :who, :key, 'approve', false, "
                "CURRENT_TIMESTAMP)", id=_db_uuid(uuid.uuid4()), ex=_db_uuid(ids[i]), ds=_db_uuid(ds["id"]),
                rev=_db_uuid(ex["revision"]["id"]), who=f"r{k}", key=_db_uuid(uuid.uuid4()))
    snap = freeze(api, ds, filter={"min_approvals": 2})
    assert snap["member_count"] == 1 and snap["counts"]["excluded"]["min_approvals"] == 2


def test_bad_input(api):
    ds, ids = approved_dataset(api, 5)
    set_status(ids[:3], "pending_review")
    set_status(ids[3:], "erased")
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "empty"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "empty_selection"
    assert err["details"]["excluded"]["status"] == 3 and err["details"]["excluded"]["erased"] == 2
    assert api.as_("trainer").get("/v1/snapshots", params={"dataset": ds["id"]}).json()["items"] == []

    set_status(ids[:3], "approved")
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "x",
                                                      "filter": {"statuses": ["approved"], "colour": "red"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "filter.colour"
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "x",
                                                      "filter": {"statuses": ["aproved"]}})
    assert r.status_code == 422
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "x", "validation_fraction": 1.5})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "validation_fraction"
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": str(uuid.uuid4()), "name": "x"})
    assert r.status_code == 404
    snap = freeze(api, ds, "ok")
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "ok"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
    r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": "csv"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "format"
    r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"split": "test"})
    assert r.status_code == 422
    assert api.as_("trainer").get(f"/v1/snapshots/{uuid.uuid4()}").status_code == 404
    assert api.as_("trainer").get("/v1/snapshots/not-a-uuid/export").status_code == 404
    # No update endpoint exists: a snapshot is immutable.
    assert api.as_("admin").patch(f"/v1/snapshots/{snap['id']}", json={"name": "y"}).status_code == 405


def test_roles(api):
    ds, _ = approved_dataset(api, 3)
    for role in ("trainer", "auditor", "reviewer"):
        r = api.as_(role).post("/v1/snapshots", json={"dataset_id": ds["id"], "name": f"by-{role}"})
        assert r.status_code == 403, role
    snap = freeze(api, ds)
    for role in ("trainer", "auditor", "curator", "admin"):
        assert api.as_(role).get(f"/v1/snapshots/{snap['id']}/export").status_code == 200, role
        assert api.as_(role).get(f"/v1/snapshots/{snap['id']}/manifest.json").status_code == 200, role
    assert api.as_("reviewer").get(f"/v1/snapshots/{snap['id']}").status_code == 403
    assert api.client.get(f"/v1/snapshots/{snap['id']}").status_code == 401
    actions = api.as_("auditor").get("/v1/audit/verify").json()
    assert actions["ok"]


CHAT = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                  {"role": "assistant", "content": "Bye — ünïcödé ✓ \"quoted\" back\\slash\ttab", "weight": 1}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "weight": 0}]},
]


def _chat_snapshot(api) -> tuple[dict, dict]:
    ds = new_dataset(api, "chat")
    lines = [{**c, "provenance": {"source": "s", "source_ref": f"c{i}", "license": "MIT"}} for i, c in enumerate(CHAT)]
    set_status(ingest(api, ds, lines), "approved")
    return ds, freeze(api, ds, validation_fraction=0.0)


def test_exports_in_every_format(api):
    _, snap = _chat_snapshot(api)
    recs, _ = export_records(api, snap["id"])
    by_first = {rec["content"]["messages"][-1]["content"]: rec for rec in recs}
    assert len(recs) == 2
    for rec in recs:
        assert stdlib_content_sha256(rec["content"]) == rec["content_sha256"]
    assert stdlib_manifest(recs) == snap["manifest_sha256"]
    assert set(by_first) == {CHAT[0]["messages"][-1]["content"], "4"}

    def lines(fmt: str) -> list[dict]:
        r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": fmt})
        assert r.status_code == 200 and r.headers["X-Manifest-SHA256"] == snap["manifest_sha256"]
        return [json.loads(x) for x in r.content.splitlines()]

    oa = lines("openai-chat")
    assert sorted(len(x["messages"]) for x in oa) == [2, 5] and all(set(x) == {"messages"} for x in oa)
    al = {x["output"]: x for x in lines("alpaca")}
    long = al[CHAT[0]["messages"][-1]["content"]]
    assert long["system"] == "Be brief." and long["instruction"] == "Bye" and long["history"] == [["Hi", "Hello!"]]
    co = {json.dumps(x["completion"]): x for x in lines("completion")}
    assert all(isinstance(x["prompt"], list) for x in co.values())

    r = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/export", params={"format": "parquet"})
    assert r.status_code == 200 and r.content[:4] == b"PAR1"
    import pandas as pd

    df = pd.read_parquet(io.BytesIO(r.content))
    assert len(df) == 2 and set(df.columns) >= {"messages", "split", "revision_id", "example_id", "content_sha256"}
    from app.snapshots.export import content_from_parquet_row

    for row in df.to_dict("records"):
        row["messages"] = [dict(m) for m in row["messages"]]
        content = content_from_parquet_row("chat", row)
        assert stdlib_content_sha256(content) == row["content_sha256"]
    assert stdlib_manifest(df[["content_sha256", "split"]].to_dict("records")) == snap["manifest_sha256"]


@pytest.mark.parametrize("fmt", ["instruction", "completion", "preference"])
def test_parquet_round_trips_each_task_format(api, fmt):
    rows = {
        "instruction": [{"instruction": "Sum", "input": "1 2", "output": "3"}, {"instruction": "Hi", "output": "Hello"},
                        # CSV and COPY escaping: quotes, commas, newlines, backslashes, non-ASCII
                        {"instruction": 'Say "hi",\nthen \\ leave', "input": 'a,b\n"c"', "output": "ünï ✓ \\n"}],
        "completion": [{"prompt": "The sky is", "completion": " blue."}],
        "preference": [{"prompt": "Pick", "chosen": "good", "rejected": "bad"}],
    }[fmt]
    ds = new_dataset(api, fmt)
    set_status(ingest(api, ds, [{**x, "provenance": {"source": "s", "source_ref": f"r{i}"}}
                                for i, x in enumerate(rows)]), "approved")
    snap = freeze(api, ds, validation_fraction=0.5)
    import pandas as pd

    from app.snapshots.export import content_from_parquet_row

    df = pd.read_parquet(io.BytesIO(api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export",
                                                           params={"format": "parquet"}).content))
    assert len(df) == len(rows)
    for row in df.to_dict("records"):
        assert stdlib_content_sha256(content_from_parquet_row(fmt, row)) == row["content_sha256"]
    for export_format in ("openai-chat", "alpaca", "completion"):
        r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": export_format})
        assert r.status_code == 200 and len(r.content.splitlines()) == len(rows)


def test_erased_members_are_omitted_and_the_original_hash_stays(api):
    ds, _ = approved_dataset(api, 10)
    snap = freeze(api, ds, validation_fraction=0.3)
    original = snap["manifest_sha256"]
    recs, _ = export_records(api, snap["id"])
    gone = recs[0]["example_id"]
    set_status([gone], "erased")
    recs2, r = export_records(api, snap["id"])
    assert len(recs2) == 9 and gone not in {x["example_id"] for x in recs2}
    assert r.headers["X-Manifest-SHA256"] == original and r.headers["X-Erased-Omitted"] == "1"
    assert r.headers["X-Export-Manifest-SHA256"] == stdlib_manifest(recs2) != original
    m = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/manifest.json").json()
    assert m["manifest_sha256"] == original and m["contains_erased"] is True and m["erased_members"] == 1
    assert m["erased_example_ids"] == [gone] and m["export_manifest_sha256"] == stdlib_manifest(recs2)
    got = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}").json()
    assert got["contains_erased"] is True and got["manifest_sha256"] == original


def test_diff(api):
    ds, ids = approved_dataset(api, 12)
    a = freeze(api, ds, "a", validation_fraction=0.0)
    set_status(ids[:2], "rejected")
    more = ingest(api, ds, [instruction_line(i) for i in range(12, 15)])
    set_status(more, "approved")
    # A new revision of one example (what a reviewer edit does), made directly here.
    from app.core.db import session_scope
    from app.core.ids import new_id
    from app.examples.formats import content_sha256
    from app.models.example import Example, ExampleRevision

    with session_scope() as s:
        ex = s.get(Example, uuid.UUID(ids[5]))
        content = {"instruction": "edited", "input": "", "output": "edited answer"}
        rev = ExampleRevision(id=new_id(), example_id=ex.id, seq=9, content=content,
                              content_sha256=content_sha256(content), reason="reviewer_edit", author="test")
        s.add(rev)
        s.flush()
        ex.current_revision_id = rev.id
    b = freeze(api, ds, "b", validation_fraction=0.0)
    d = api.as_("auditor").get(f"/v1/snapshots/{a['id']}/diff/{b['id']}").json()
    assert d["counts"] == {"added": 3, "removed": 2, "revised": 1, "split_changed": 0, "unchanged": 9}
    assert d["same_manifest"] is False and len(d["items"]) == 6
    revised = [x for x in d["items"] if x["change"] == "revised"]
    assert revised[0]["example_id"] == ids[5] and revised[0]["revision_a"] != revised[0]["revision_b"]
    page1 = api.as_("auditor").get(f"/v1/snapshots/{a['id']}/diff/{b['id']}", params={"limit": 4}).json()
    page2 = api.as_("auditor").get(f"/v1/snapshots/{a['id']}/diff/{b['id']}",
                                   params={"limit": 4, "cursor": page1["next_cursor"]}).json()
    assert [x["example_id"] for x in page1["items"] + page2["items"]] == [x["example_id"] for x in d["items"]]
    assert page2["next_cursor"] is None
    only = api.as_("auditor").get(f"/v1/snapshots/{a['id']}/diff/{b['id']}", params={"change": "added"}).json()
    assert {x["example_id"] for x in only["items"]} == set(more)
    same = api.as_("auditor").get(f"/v1/snapshots/{a['id']}/diff/{a['id']}").json()
    assert same["same_manifest"] and same["items"] == [] and same["counts"]["unchanged"] == 12
    assert api.as_("auditor").get(f"/v1/snapshots/{a['id']}/diff/{b['id']}",
                                  params={"change": "bogus"}).status_code == 422


def test_datasheet_markdown_and_html(api):
    ds = new_dataset(api, description="Support answers <b>for</b> the demo")
    lines = [instruction_line(i, source="zendesk" if i % 3 else "crm") for i in range(12)]
    lines[0]["output"] = "<script>alert(1)</script>"
    set_status(ingest(api, ds, lines), "approved")
    snap = freeze(api, ds, validation_fraction=0.25)
    md = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet").text
    for section in ("## Motivation", "## Composition", "## Collection process",
                    "## Preprocessing, cleaning and labeling", "## Distribution", "## Maintenance"):
        assert section in md
    assert snap["manifest_sha256"] in md and "| zendesk | 8 |" in md and "data:image/png;base64," in md
    assert snap["merkle_root"] and f"Merkle root (RFC 6962, same sorted lines) `{snap['merkle_root']}`" in md
    assert "Not known" in md  # unknowns are stated, not dropped
    r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/datasheet", params={"format": "html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<svg" in r.text and snap["manifest_sha256"] in r.text
    assert "<b>for</b>" not in r.text and "&lt;b&gt;for&lt;/b&gt;" in r.text
    assert api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/datasheet",
                                  params={"format": "pdf"}).status_code == 422


def _review(ds: dict, ex: dict, who: str, decision: str) -> None:
    sql("INSERT INTO reviews (id, example_id, dataset_id, revision_id, reviewer, reviewer_key_id, decision, "
        "resolves_escalation, created_at) VALUES (:id, :ex, :ds, :rev, :who, :key, :d, false, CURRENT_TIMESTAMP)",
        id=_db_uuid(uuid.uuid4()), ex=_db_uuid(ex["id"]), ds=_db_uuid(ds["id"]), rev=_db_uuid(ex["revision"]["id"]),
        who=who, key=_db_uuid(uuid.uuid4()), d=decision)


def test_datasheet_preprocessing_counts_reviews_findings_and_left_out_duplicates(api):
    """The preprocessing section's figures come from the review, PII and dedup read APIs, over the
    members only: reviews and agreement of the frozen revisions, findings in members, and duplicates
    of the dataset the freeze left out."""
    ds, ids = approved_dataset(api, 4)
    exs = [api.as_("curator").get(f"/v1/examples/{i}").json() for i in ids]
    _review(ds, exs[0], "alice", "approve")
    _review(ds, exs[0], "bob", "approve")  # reviewed twice, alike
    _review(ds, exs[1], "alice", "approve")
    _review(ds, exs[1], "bob", "reject")  # reviewed twice, not alike
    rev = exs[2]["revision"]["id"]
    for verdict in ("false_positive", None):
        sql("INSERT INTO pii_findings (id, example_id, dataset_id, revision_id, source_revision_id, field_path, "
            "entity_type, start, \"end\", scrubbed_start, scrubbed_end, score, recognizer, operator, engine, model, "
            "verdict, created_at) VALUES (:id, :ex, :ds, :rev, :rev, 'output', 'EMAIL_ADDRESS', 0, 5, 0, 7, 1.0, "
            "'email', 'replace', 'pedigree', 'm1', :v, CURRENT_TIMESTAMP)",
            id=_db_uuid(uuid.uuid4()), ex=_db_uuid(ids[2]), ds=_db_uuid(ds["id"]), rev=_db_uuid(rev), v=verdict)
    sql("INSERT INTO duplicate_links (id, dataset_id, example_id, canonical_example_id, method, similarity, "
        "created_by, created_at) VALUES (:id, :ds, :ex, :canon, 'minhash', 0.9, 'system', CURRENT_TIMESTAMP)",
        id=_db_uuid(uuid.uuid4()), ds=_db_uuid(ds["id"]), ex=_db_uuid(ids[3]), canon=_db_uuid(ids[0]))
    snap = freeze(api, ds)
    assert snap["member_count"] == 3 and snap["counts"]["excluded"]["duplicate"] == 1
    md = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet").text
    assert "| alice | 2 | 0 | 0 |" in md and "| bob | 1 | 1 | 0 |" in md
    assert "Agreement: 1 of 2 revisions reviewed more than once got the same decision" in md
    assert "| EMAIL_ADDRESS | replace | 2 | 1 |" in md
    assert "| minhash | 1 |" in md


def test_content_hash_formula_matches_the_stdlib_on_awkward_text():
    from app.examples.formats import content_sha256

    awkward = {"messages": [{"role": "user", "content": "ü\u2028\u2029 \x7f \x1f \\ \" / 𝄞 \u00e9 e\u0301"},
                            {"role": "assistant", "content": "<>&'", "weight": 1}]}
    assert content_sha256(awkward) == stdlib_content_sha256(awkward)


def test_cli_export_writes_and_verifies(api, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app as cli

    _, snap = _chat_snapshot(api)
    out = tmp_path / "out"
    runner = CliRunner()
    for fmt in ("pedigree", "parquet", "alpaca"):
        res = runner.invoke(cli, ["snapshot", "export", snap["id"], "--format", fmt, "--out", str(out)])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["verified"] and summary["records"] == 2
        assert summary["manifest_sha256"] == snap["manifest_sha256"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["s1.all.alpaca.jsonl", "s1.all.jsonl", "s1.all.parquet", "s1.manifest.json"]
    # README's line: a converted format of one split (this broke when the converters moved to formats.py).
    res = runner.invoke(cli, ["snapshot", "export", snap["id"], "--format", "openai-chat", "--split", "train",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in (out / "s1.train.openai-chat.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    res = runner.invoke(cli, ["snapshot", "export", snap["id"], "--format", "trl", "--out", str(out)])
    assert res.exit_code == 2 and "needs a preference snapshot" in res.output
    res = runner.invoke(cli, ["snapshot", "export", snap["id"], "--format", "xml"])
    assert res.exit_code == 2


def test_parquet_loads_with_hf_datasets(api, tmp_path, monkeypatch):
    import datasets  # a dev dependency: the service itself never imports it
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _, snap = _chat_snapshot(api)
    path = tmp_path / "s.parquet"
    path.write_bytes(api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": "parquet"}).content)
    d = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert d.num_rows == 2 and {"messages", "split", "content_sha256"} <= set(d.column_names)
