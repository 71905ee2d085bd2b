"""Pattern-only scrubbing is the operator's explicit choice; every datasheet of a snapshot whose members it
scrubbed says so in its preprocessing section (issue #3). Both backends, through the real datasheet API."""

from __future__ import annotations

import uuid

from tests.factories import freeze, ingest, instruction_line, new_dataset, set_status


def _record_scrubs(ids: list[str], model: str) -> None:
    from app.core.db import session_scope
    from app.models.example import Example
    from app.models.pii import PiiScrub

    with session_scope() as s:
        for ex in s.query(Example).filter(Example.id.in_([uuid.UUID(i) for i in ids])):
            s.query(PiiScrub).filter(PiiScrub.example_id == ex.id).delete()
            s.add(PiiScrub(example_id=ex.id, dataset_id=ex.dataset_id, source_revision_id=ex.current_revision_id,
                           source_sha256="0" * 64, result_revision_id=ex.current_revision_id,
                           policy_sha256="0" * 64, findings=0,
                           flags={"mode": "pattern_only"} if model == "pattern-only" else {},
                           engine="presidio-analyzer==2.2.366", model=model))


def _datasheet(api, ds, ids, name):
    set_status(ids, "approved")
    snap = freeze(api, ds, name=name)
    return api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet").text


def test_pattern_only_scrubbing_is_flagged_in_the_datasheet(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, [instruction_line(i) for i in range(6)])
    _record_scrubs(ids[:2], "pattern-only")
    _record_scrubs(ids[2:], "en_core_web_sm==3.8.0")
    md = _datasheet(api, ds, ids, "mixed")
    pre = md.split("## Preprocessing, cleaning and labeling", 1)[1].split("\n## ", 1)[0]
    assert "**Warning: PII scrubbing ran in pattern-only mode for 2 of 6 member(s).**" in pre
    assert "| pattern-only | 2 |" in pre and "| en_core_web_sm==3.8.0 | 4 |" in pre


def test_no_warning_when_every_member_was_scrubbed_with_the_model(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, [instruction_line(i) for i in range(3)])
    _record_scrubs(ids, "en_core_web_sm==3.8.0")
    md = _datasheet(api, ds, ids, "ner")
    assert "pattern-only" not in md and "| en_core_web_sm==3.8.0 | 3 |" in md
