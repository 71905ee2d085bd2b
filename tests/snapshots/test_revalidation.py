"""Validation age on both databases: the pipeline stamps `last_validated_at`, a dataset's
`governance_policy.revalidate_after_days` makes older (or never validated) examples `stale`, freezes
leave them out by that counted rule, and the datasheet shows the distribution of validation age."""

from __future__ import annotations

import datetime as dt

from tests.factories import freeze, get_example, ingest, instruction_line, new_dataset, set_status, sql


def test_stale_examples_are_left_out_and_counted(api):
    ds = new_dataset(api, governance_policy={"revalidate_after_days": 30})
    assert ds["governance_policy"]["revalidate_after_days"] == 30
    ids = ingest(api, ds, [instruction_line(i) for i in range(10)])
    ex = get_example(api, ids[0])
    # The pipeline finished on it just now.
    seen = dt.datetime.fromisoformat(ex["last_validated_at"])
    assert abs((dt.datetime.now(dt.UTC) - seen.astimezone(dt.UTC)).total_seconds()) < 600
    set_status(ids, "approved")
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).replace(tzinfo=None)
    sql("UPDATE examples SET last_validated_at = :old WHERE source_ref IN ('helpdesk-0', 'helpdesk-1', 'helpdesk-2')",
        old=old)
    sql("UPDATE examples SET last_validated_at = NULL WHERE source_ref = 'helpdesk-3'")
    snap = freeze(api, ds, validation_fraction=0.0)
    assert snap["counts"]["excluded"]["stale"] == 4 and snap["member_count"] == 6
    md = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet").text
    assert "Validation age" in md and "| under 30 days | 6 |" in md and "older than 30 days are stale" in md

    # Without the policy nothing is stale; the datasheet then shows the old and the never-validated too.
    api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"governance_policy": {}})
    snap2 = freeze(api, ds, "s2", validation_fraction=0.0)
    assert snap2["counts"]["excluded"]["stale"] == 0 and snap2["member_count"] == 10
    md = api.as_("auditor").get(f"/v1/snapshots/{snap2['id']}/datasheet").text
    assert "| 30-89 days | 3 |" in md and "| never validated | 1 |" in md


def test_bad_governance_policy_names_the_field(api):
    r = api.as_("curator").post("/v1/datasets", json={"name": "gp-bad", "format": "instruction",
                                                       "governance_policy": {"revalidate_after_days": 0}})
    assert r.status_code == 422 and "governance_policy.revalidate_after_days" in r.text
    r = api.as_("curator").post("/v1/datasets", json={"name": "gp-bad", "format": "instruction",
                                                       "governance_policy": {"revalidate_on": ["moon_phase"]}})
    assert r.status_code == 422 and "revalidate_on" in r.text


def test_a_rescrub_revalidates_what_it_leaves_unchanged(api):
    from tests.pii.test_rescrub import SCRUB_PUBLIC, TEXTS, _examples, _line

    ds = new_dataset(api, pii_policy=SCRUB_PUBLIC)
    ingest(api, ds, [_line(k) for k in TEXTS])
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).replace(tzinfo=None)
    sql("UPDATE examples SET last_validated_at = :old WHERE source_ref IN ('a', 'c')", old=old)
    # Allowing "Paris" changes a and b (back through the pipeline, stamped when it finishes) and leaves c
    # as it was: c is stamped by the re-scrub itself.
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"pii_policy": {**SCRUB_PUBLIC,
                                                                                  "allow_list": ["Paris"]}})
    assert r.status_code == 200, r.text
    ex = _examples(api, ds)
    assert ex["c"]["revision"]["content"]["instruction"] != TEXTS["c"]  # still scrubbed (Maria): unchanged
    for ref in ("a", "c"):
        seen = dt.datetime.fromisoformat(get_example(api, ex[ref]["id"])["last_validated_at"])
        assert (dt.datetime.now(dt.UTC) - seen.astimezone(dt.UTC)).days < 1, ref
