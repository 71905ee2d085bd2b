"""The dedup stage through the API on the embedded default (SQLite) and PostgreSQL: statuses, links,
clusters, overrules that stick, rebuilds, the evaluation-set guard, and a Redis fault mid-batch."""

import uuid

import orjson
import pytest
from sqlalchemy import func, select

from app.core.db import session_scope
from app.models.dedup import DedupPair, DedupSignature
from app.models.example import DuplicateLink, Example
from tests.factories import new_dataset

NDJSON = {"Content-Type": "application/x-ndjson"}
NO_PII = {"pii_policy": {"enabled": False}}

ARTICLE = (
    "The committee met on Tuesday to review the proposed budget for the new library wing. After a long "
    "discussion about shelving, lighting and the reading room, members agreed to postpone the vote until "
    "the architect presents revised drawings that reduce the cost of the glass facade by a fifth."
)
OTHER = (
    "Photosynthesis converts light energy into chemical energy stored in glucose. Chlorophyll in the "
    "chloroplasts absorbs mostly blue and red light and reflects green, which is why leaves look green."
)


JA = (
    "東京は日本の首都であり、世界最大の都市圏の一つです。江戸時代には江戸と呼ばれ、徳川幕府の本拠地として栄えました。"
    "明治維新の後に東京と改名され、現在では政治、経済、文化の中心として多くの人々が暮らしています。"
)


def near(text: str, i: int) -> str:
    words = text.split()
    words[-2 - (i % 3)] = f"variant{i}"
    return " ".join(words)


def ingest(api, ds, rows, role="curator"):
    body = b"\n".join(orjson.dumps(r) for r in rows)
    r = api.as_(role).post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON)
    assert r.status_code == 200, r.text
    return r.json()


def by_ref(api, ds):
    # Admin: the one role that reads source refs as stored (docs/pii.md).
    out = api.as_("admin").get(f"/v1/datasets/{ds['id']}/examples?limit=1000").json()["items"]
    return {i["provenance"]["source_ref"]: i for i in out}


def row(ref, output, instruction="Summarise the article."):
    return {"instruction": instruction, "input": "", "output": output, "provenance": {"source": "t", "source_ref": ref}}


def test_near_duplicate_is_linked_to_the_earliest_and_listed(api):
    ds = new_dataset(api, **NO_PII)
    ingest(api, ds, [row("a", ARTICLE), row("z", OTHER)])
    ingest(api, ds, [row("b", near(ARTICLE, 1)), row("c", "Completely unrelated: " + OTHER[::-1])])
    ex = by_ref(api, ds)
    assert ex["a"]["status"] == "pending_review"
    assert ex["b"]["status"] == "duplicate"
    assert ex["c"]["status"] == "pending_review" and ex["z"]["status"] == "pending_review"
    dup = ex["b"]["duplicates"]
    assert dup[0]["example_id"] == ex["a"]["id"] and dup[0]["method"] == "minhash"
    assert 0.8 <= dup[0]["similarity"] < 1.0
    assert ex["b"]["dedup"]["cluster"] == {"canonical": ex["a"]["id"], "size": 2, "is_canonical": False}
    assert ex["b"]["contaminates_eval"] is False
    page = api.as_("curator").get(f"/v1/datasets/{ds['id']}/duplicates").json()
    assert page == {"clusters": [{"canonical": ex["a"]["id"], "size": 2,
                                  "members": [{"example_id": ex["b"]["id"], "method": "minhash",
                                               "similarity": dup[0]["similarity"]}]}],
                    "next_cursor": None}
    summary = api.as_("curator").get(f"/v1/datasets/{ds['id']}/dedup").json()
    assert summary["duplicates"] == {"minhash": 1} and summary["index"]["bands"] == 16
    verify = api.as_("auditor").get("/v1/audit/verify").json()
    assert verify["ok"]


def test_duplicates_within_one_batch_and_a_chain_form_one_cluster(api):
    ds = new_dataset(api, **NO_PII)
    ingest(api, ds, [row(f"r{i}", near(ARTICLE, i)) for i in range(4)] + [row("o", OTHER)])
    ex = by_ref(api, ds)
    statuses = sorted(ex[f"r{i}"]["status"] for i in range(4))
    assert statuses == ["duplicate", "duplicate", "duplicate", "pending_review"]
    page = api.as_("curator").get(f"/v1/datasets/{ds['id']}/duplicates?limit=1").json()
    assert len(page["clusters"]) == 1 and page["clusters"][0]["size"] == 4
    assert page["next_cursor"] is None


def test_texts_that_must_not_link(api):
    """Short texts, CJK, and unrelated texts: nothing is marked without a verified similarity."""
    ds = new_dataset(api, "completion", **NO_PII)
    rows = [
        {"prompt": "Hi", "completion": "Hello", "provenance": {"source": "t", "source_ref": "s1"}},
        {"prompt": "Hi", "completion": "Goodbye", "provenance": {"source": "t", "source_ref": "s2"}},
        {"prompt": JA, "completion": "人口は約1400万人で、多くの企業の本社があります。", "provenance": {"source": "t", "source_ref": "j1"}},
        {"prompt": JA, "completion": "人口は約1400万人で、多くの会社の本社があります。", "provenance": {"source": "t", "source_ref": "j2"}},
        {"prompt": "京都は古い寺院と庭園で知られています。", "completion": "毎年多くの観光客が訪れる歴史的な都市です。",
         "provenance": {"source": "t", "source_ref": "j3"}},
    ]
    ingest(api, ds, rows)
    ex = by_ref(api, ds)
    assert ex["s1"]["status"] == ex["s2"]["status"] == "pending_review"
    assert ex["s1"]["dedup"]["signature"]["flags"] == ["short"]
    assert {ex["j1"]["status"], ex["j2"]["status"]} == {"pending_review", "duplicate"}
    assert "char_shingles" in ex["j1"]["dedup"]["signature"]["flags"]
    assert ex["j3"]["status"] == "pending_review"


def test_overrule_not_duplicate_is_audited_and_sticks_on_rebuild(api):
    ds = new_dataset(api, **NO_PII)
    ingest(api, ds, [row("a", ARTICLE)])
    ingest(api, ds, [row("b", near(ARTICLE, 1))])
    ex = by_ref(api, ds)
    b = ex["b"]["id"]
    r = api.as_("auditor").post(f"/v1/examples/{b}/dedup:overrule", json={"decision": "not_duplicate", "reason": "x"})
    assert r.status_code == 403
    r = api.as_("reviewer").post(f"/v1/examples/{b}/dedup:overrule",
                                 json={"decision": "not_duplicate", "reason": "different budget figures"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending_review"
    assert r.json()["dedup"]["decisions"][0]["decision"] == "not_duplicate"
    r = api.as_("reviewer").post(f"/v1/examples/{b}/dedup:overrule", json={"decision": "not_duplicate", "reason": "x"})
    assert r.status_code == 409  # nothing left to overrule
    # a third near copy joins the canonical but never puts a and b back together
    ingest(api, ds, [row("c", near(ARTICLE, 2))])
    rb = api.as_("curator").post(f"/v1/datasets/{ds['id']}/dedup:rebuild")
    assert rb.status_code == 202, rb.text
    summary = api.as_("curator").get(f"/v1/datasets/{ds['id']}/dedup").json()
    assert summary["rebuild"]["status"] == "done", summary
    assert summary["rebuild"]["result"]["signatures_reused"] >= 2
    ex = by_ref(api, ds)
    assert ex["b"]["status"] == "pending_review"
    assert ex["a"]["status"] == "pending_review"
    assert ex["c"]["status"] == "duplicate"
    events = api.as_("auditor").get("/v1/audit/verify").json()
    assert events["ok"]


def test_rebuild_after_threshold_change(api):
    ds = new_dataset(api, **NO_PII)
    words = ARTICLE.split()
    lighter = " ".join(words[:-12] + [w.upper() + "x" for w in words[-12:]])  # Jaccard well below 0.8
    ingest(api, ds, [row("a", ARTICLE), row("b", lighter)])
    assert by_ref(api, ds)["b"]["status"] == "pending_review"
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"dedup_policy": {"threshold": 0.3}})
    assert r.status_code == 200, r.text
    assert api.as_("curator").post(f"/v1/datasets/{ds['id']}/dedup:rebuild").status_code == 202
    ex = by_ref(api, ds)
    assert ex["b"]["status"] == "duplicate", ex["b"]["dedup"]
    summary = api.as_("curator").get(f"/v1/datasets/{ds['id']}/dedup").json()
    assert summary["index"]["bands"] > 16 and summary["rebuild"]["result"]["threshold"] == 0.3
    # and back: a stricter threshold gives b its status back
    api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"dedup_policy": {"threshold": 0.9}})
    api.as_("curator").post(f"/v1/datasets/{ds['id']}/dedup:rebuild")
    assert by_ref(api, ds)["b"]["status"] == "pending_review"


@pytest.mark.parametrize("eval_first", [True, False])
def test_eval_contamination_guard(api, eval_first):
    evalset = new_dataset(api, is_eval_set=True, **NO_PII)
    train = new_dataset(api, **NO_PII)
    steps = [(evalset, [row("e1", ARTICLE)]), (train, [row("t1", near(ARTICLE, 1)), row("t2", OTHER)])]
    for ds, rows in steps if eval_first else steps[::-1]:
        ingest(api, ds, rows)
    ex = by_ref(api, train)
    assert ex["t1"]["contaminates_eval"] is True
    assert ex["t1"]["dedup"]["eval_matches"][0]["eval_dataset_id"] == evalset["id"]
    assert ex["t2"]["contaminates_eval"] is False
    assert ex["t1"]["status"] == "pending_review"  # flagged, not a duplicate: it is in another dataset
    t1 = ex["t1"]["id"]
    body = {"decision": "allow_eval_overlap", "reason": "the eval item is public boilerplate"}
    assert api.as_("reviewer").post(f"/v1/examples/{t1}/dedup:overrule", json=body).status_code == 403
    r = api.as_("curator").post(f"/v1/examples/{t1}/dedup:overrule", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["contaminates_eval"] is False
    summary = api.as_("curator").get(f"/v1/datasets/{train['id']}/dedup").json()
    assert summary["contaminates_eval"] == 0


QA_Q = "Which two colours of light does chlorophyll absorb most strongly during photosynthesis in plant leaves?"
QA_A = "It absorbs mostly blue and red light and reflects the green part of the spectrum back to our eyes."
FILLER = " ".join(f"Paragraph {i} of the field guide describes soil, water and the seasons in plain words." for i in range(12))


def test_eval_containment_guard(api):
    """An evaluation item pasted inside a long training text (Jaccard ~0.1, far below any threshold)
    is caught by the n-gram containment check; a shared phrase is not; the eval set's policy can turn
    it off; after an eval item arrives, a rebuild of the training set finds older training texts."""
    evalset = new_dataset(api, is_eval_set=True, **NO_PII)
    train = new_dataset(api, **NO_PII)
    ingest(api, evalset, [{"instruction": QA_Q, "input": "", "output": QA_A,
                           "provenance": {"source": "t", "source_ref": "e1"}}])
    inside = f"{FILLER} {QA_Q} {QA_A} {FILLER[::-1]}"
    phrase = f"{FILLER} Which two colours of light does chlorophyll absorb most strongly? Nobody knows."
    ingest(api, train, [row("t_in", inside), row("t_phrase", phrase), row("t_other", OTHER)])
    ex = by_ref(api, train)
    assert ex["t_in"]["contaminates_eval"] is True, ex["t_in"]["dedup"]
    (m,) = ex["t_in"]["dedup"]["eval_matches"]
    assert m["method"] == "containment" and m["similarity"] >= 0.8 and m["eval_dataset_id"] == evalset["id"]
    assert ex["t_phrase"]["contaminates_eval"] is False and ex["t_other"]["contaminates_eval"] is False
    # The training text the other way round: a passage of a long evaluation item.
    long_eval = new_dataset(api, is_eval_set=True, **NO_PII)
    ingest(api, long_eval, [row("e_long", inside)])
    ingest(api, train, [row("t_part", f"{QA_Q} {QA_A}")])
    got = {m["eval_dataset_id"]: m["method"] for m in by_ref(api, train)["t_part"]["dedup"]["eval_matches"]}
    assert got == {long_eval["id"]: "containment", evalset["id"]: "minhash"}  # and a near copy of e1
    # Rebuilding an eval set recomputes its Jaccard hits and keeps the containment ones.
    assert api.as_("curator").post(f"/v1/datasets/{evalset['id']}/dedup:rebuild").status_code == 202
    assert by_ref(api, train)["t_in"]["contaminates_eval"] is True
    # Off in the eval set's policy: its containment hits go at its rebuild, and nothing new is flagged.
    api.as_("curator").patch(f"/v1/datasets/{evalset['id']}", json={"dedup_policy": {"eval_containment": None}})
    api.as_("curator").patch(f"/v1/datasets/{long_eval['id']}", json={"dedup_policy": {"eval_containment": None}})
    for ds in (evalset, long_eval):
        assert api.as_("curator").post(f"/v1/datasets/{ds['id']}/dedup:rebuild").status_code == 202
    other_filler = " ".join(f"Chapter {i} of the cookbook lists flour, butter and an oven at a steady heat." for i in range(12))
    ingest(api, train, [row("t_in2", f"{other_filler} {QA_Q} {QA_A}")])
    ex = by_ref(api, train)
    assert ex["t_in2"]["contaminates_eval"] is False
    # t_in stays flagged by Jaccard only: it is a copy of e_long (the same text, same fields).
    assert {m["method"] for m in ex["t_in"]["dedup"]["eval_matches"]} == {"minhash"}
    # An eval item after the training texts that contain it: the sweep its fingerprints set off finds
    # them (in-process here, right after the eval batch commits; a dedup-queue task with workers).
    late = new_dataset(api, is_eval_set=True, **NO_PII)
    ingest(api, late, [row("e_late", f"{QA_Q} {QA_A}")])
    ex = by_ref(api, train)
    assert ex["t_in2"]["contaminates_eval"] is True and ex["t_phrase"]["contaminates_eval"] is False
    assert [m["method"] for m in ex["t_in2"]["dedup"]["eval_matches"]] == ["containment"]
    from app.dedup import jobs

    assert jobs.eval_sweep(late["id"]) == {"skipped": "already swept", "version": 1}  # sweeps coalesce
    # A rebuild of the training set finds the same, and nothing twice.
    assert api.as_("curator").post(f"/v1/datasets/{train['id']}/dedup:rebuild").status_code == 202
    ex = by_ref(api, train)
    assert ex["t_in2"]["contaminates_eval"] is True and ex["t_in"]["contaminates_eval"] is True
    assert len(ex["t_in2"]["dedup"]["eval_matches"]) == 1
    # Erasing the eval item takes its n-gram fingerprints with it.
    from app.models.dedup import DedupEvalNgram

    e_late = by_ref(api, late)["e_late"]["id"]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(DedupEvalNgram)
                        .where(DedupEvalNgram.example_id == uuid.UUID(e_late))) > 0
    r = api.as_("admin").post("/v1/erasure-requests", json={
        "selector": {"source_refs": ["e_late"], "dataset_id": late["id"]}, "reason": "test"})
    assert r.status_code in (200, 201, 202), r.text
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(DedupEvalNgram)
                        .where(DedupEvalNgram.example_id == uuid.UUID(e_late))) == 0


def test_a_redis_fault_mid_batch_marks_nothing_and_the_rerun_does(db, monkeypatch):
    import redis
    from fastapi.testclient import TestClient

    from app.dedup import service
    from app.main import create_app
    from app.pipeline import jobs as pipeline
    from tests.factories import Api, make_keys

    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        ds = new_dataset(api, **NO_PII)
        ingest(api, ds, [row("a", ARTICLE)])
        real = service.open_index

        class Broken:
            def __init__(self, idx):
                self.idx = idx

            def query_insert(self, keys, sigs):
                raise redis.exceptions.ConnectionError("connection reset mid-batch")

        monkeypatch.setattr(service, "open_index", lambda *a, **k: Broken(real(*a, **k)))
        ingest(api, ds, [row("b", near(ARTICLE, 1))])  # the in-process task fails and is logged
        b = by_ref(api, ds)["b"]
        assert b["status"] != "duplicate" and b["stage"] == "dedup"
        with session_scope() as s:
            assert s.scalar(select(func.count()).select_from(DuplicateLink)) == 0
            assert s.scalar(select(func.count()).select_from(DedupPair)) == 0
            assert s.get(DedupSignature, uuid.UUID(b["id"])) is None
        monkeypatch.setattr(service, "open_index", real)
        assert pipeline.run_stage("dedup", [b["id"]]) == 1  # what the redelivery / sweeper does
        b = by_ref(api, ds)["b"]
        assert b["status"] == "duplicate" and b["stage"] is None
        with session_scope() as s:
            assert s.scalar(select(func.count()).select_from(Example).where(Example.status == "duplicate")) == 1


def test_a_bridge_merges_clusters_and_the_approved_member_stays_canonical(api):
    from sqlalchemy import update

    words = [f"word{i}" for i in range(100)]
    c_text = " ".join(words)
    a_text = " ".join(words[:-6] + [f"end{i}" for i in range(6)])  # J(a, c) = 0.89
    b_text = " ".join([f"st{i}" for i in range(6)] + words[6:])  # J(b, c) = 0.83, J(a, b) = 0.74
    ds = new_dataset(api, **NO_PII)
    ingest(api, ds, [row("a", a_text)])
    ingest(api, ds, [row("b", b_text)])
    ex = by_ref(api, ds)
    assert ex["a"]["status"] == ex["b"]["status"] == "pending_review"
    with session_scope() as s:  # as if a reviewer approved b
        s.execute(update(Example).where(Example.id == uuid.UUID(ex["b"]["id"])).values(status="approved"))
    ingest(api, ds, [row("c", c_text)])
    ex = by_ref(api, ds)
    assert ex["b"]["status"] == "approved"
    assert ex["a"]["status"] == "duplicate" and ex["c"]["status"] == "duplicate"
    assert {d["example_id"] for d in ex["a"]["duplicates"] if d["relation"] == "canonical"} == {ex["b"]["id"]}
    page = api.as_("curator").get(f"/v1/datasets/{ds['id']}/duplicates").json()
    assert [(c["canonical"], c["size"]) for c in page["clusters"]] == [(ex["b"]["id"], 3)]
    # separating a from b gives a its review status back; c stays with b
    r = api.as_("curator").post(f"/v1/examples/{ex['a']['id']}/dedup:overrule",
                                json={"decision": "not_duplicate", "reason": "different ending"})
    assert r.status_code == 200, r.text
    ex = by_ref(api, ds)
    assert ex["a"]["status"] == "pending_review" and ex["c"]["status"] == "duplicate"


def test_an_exact_copy_follows_its_twin_into_a_later_cluster(api):
    """x is an exact copy of a found at ingest (that link stays as ingest recorded it); when a later
    joins b's cluster, x is listed in b's cluster too, via a, and its view names b as canonical."""
    from sqlalchemy import update

    words = [f"word{i}" for i in range(100)]
    c_text = " ".join(words)
    a_text = " ".join(words[:-6] + [f"end{i}" for i in range(6)])
    b_text = " ".join([f"st{i}" for i in range(6)] + words[6:])
    ds = new_dataset(api, **NO_PII)
    ingest(api, ds, [row("a", a_text)])
    ingest(api, ds, [row("b", b_text)])
    x = row("x", a_text)
    x["provenance"]["source"] = "another-source"
    assert ingest(api, ds, [x])["accepted"] == 1
    ex = by_ref(api, ds)
    assert ex["x"]["status"] == "duplicate"
    with session_scope() as s:  # as if a reviewer approved b
        s.execute(update(Example).where(Example.id == uuid.UUID(ex["b"]["id"])).values(status="approved"))
    ingest(api, ds, [row("c", c_text)])
    ex = by_ref(api, ds)
    assert ex["a"]["status"] == "duplicate"
    page = api.as_("curator").get(f"/v1/datasets/{ds['id']}/duplicates").json()
    assert [c["canonical"] for c in page["clusters"]] == [ex["b"]["id"]], page
    (cluster,) = page["clusters"]
    assert cluster["size"] == 4
    members = {m["example_id"]: m for m in cluster["members"]}
    assert set(members) == {ex["a"]["id"], ex["c"]["id"], ex["x"]["id"]}
    assert members[ex["x"]["id"]] == {"example_id": ex["x"]["id"], "method": "exact", "similarity": 1.0,
                                      "via": ex["a"]["id"]}
    assert "via" not in members[ex["a"]["id"]]
    for ref in ("x", "a", "b"):
        assert ex[ref]["dedup"]["cluster"] == {"canonical": ex["b"]["id"], "size": 4, "is_canonical": ref == "b"}
    # The ingest link itself is kept as ingest recorded it.
    with session_scope() as s:
        (canon,) = s.execute(select(DuplicateLink.canonical_example_id)
                             .where(DuplicateLink.example_id == uuid.UUID(ex["x"]["id"]))).one()
    assert str(canon) == ex["a"]["id"]


def test_an_invalid_policy_is_refused_at_the_door_and_ignored_by_the_stage(api):
    # The API refuses it on create and on PATCH (422 naming the field) ...
    r = api.as_("curator").post("/v1/datasets", json={"name": "bad-dedup", "format": "instruction",
                                                      "dedup_policy": {"threshold": 2.0}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"].startswith("dedup_policy")
    ds = new_dataset(api, **NO_PII)
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"dedup_policy": {"threshold": 2.0}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"].startswith("dedup_policy")
    for bad, field in (({"eval_containment": 0}, "eval_containment"), ({"eval_ngram": 2}, "eval_ngram")):
        r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"dedup_policy": bad})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == f"dedup_policy.{field}", r.text
    # ... and a row that still holds one (written before validation existed) does not stop the stage,
    # which falls back to the defaults, while a rebuild names the bad field.
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.models.dataset import Dataset

    with session_scope() as s:
        s.execute(update(Dataset).where(Dataset.name == ds["name"]).values(dedup_policy={"threshold": 2.0}))
    ingest(api, ds, [row("a", ARTICLE), row("b", near(ARTICLE, 1))])
    assert by_ref(api, ds)["b"]["status"] == "duplicate"
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/dedup:rebuild")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "dedup_policy.threshold"
