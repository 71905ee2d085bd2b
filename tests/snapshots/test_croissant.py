"""Croissant 1.1 with RAI fields for a snapshot, validated by mlcroissant (the reference implementation), on
both databases: the distribution's sha256 is the sha256 of the export it points to, the record sets follow
the task format, the RAI texts carry figures from the records, and a format with no description for the
task is a 422 naming it."""

from __future__ import annotations

import hashlib

import pytest

from tests.factories import freeze, ingest, instruction_line, new_dataset, set_status

mlc = pytest.importorskip("mlcroissant")


def _validated(doc: dict):
    ds = mlc.Dataset(jsonld=doc)
    issues = ds.metadata.ctx.issues
    assert not issues.errors and not issues.warnings, (issues.errors, issues.warnings)
    return ds.metadata


def test_croissant_validates_and_is_generated_from_records(api):
    ds = new_dataset(api, description="Support answers",
                     documentation={"intended_uses": "Fine-tuning a support assistant.",
                                    "limitations": "English only; one product line.", "maintainer": "data-team"})
    lines = [instruction_line(i, source="zendesk" if i % 4 else "crm") for i in range(16)]
    lines[0]["output"] = "She said her mother is a nurse; call me at 415-555-0132."
    set_status(ingest(api, ds, lines), "approved")
    # The split hashes the (random) example ids: at 0.25 over 16 members, one run in a hundred had no
    # validation member (seen in CI); at 0.5 each split is empty in only 2**-16 of runs.
    snap = freeze(api, ds, validation_fraction=0.5)
    r = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/croissant")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/ld+json")
    doc = r.json()
    meta = _validated(doc)
    assert "http://mlcommons.org/croissant/1.1" in doc["conformsTo"]
    # The files are the exports, by URL and sha256 of their exact bytes.
    assert {f["@id"] for f in doc["distribution"]} == {"train.jsonl", "validation.jsonl"}
    for f in doc["distribution"]:
        split = f["@id"].split(".")[0]
        body = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export",
                                      params={"format": "pedigree", "split": split}).content
        assert f["sha256"] == hashlib.sha256(body).hexdigest() and f["contentSize"] == f"{len(body)} B"
        assert f["contentUrl"].endswith(f"/v1/snapshots/{snap['id']}/export?format=pedigree&split={split}")
    fields = {rs["@id"]: [x["name"] for x in rs["field"]] for rs in doc["recordSet"]}
    assert fields["train"] == ["revision_id", "example_id", "split", "content_sha256", "instruction", "input",
                               "output"]
    # RAI, from records: provenance, the scrub, the bias report, what the curator wrote.
    assert meta.data_biases and "bias report" in doc["rai:dataBiases"] and "gender" in doc["rai:dataBiases"]
    assert "zendesk 12" in doc["rai:dataCollection"] and "crm 4" in doc["rai:dataCollection"]
    assert "PHONE_NUMBER" in doc["rai:personalSensitiveInformation"] and meta.personal_sensitive_information
    assert "PHONE_NUMBER" in doc["rai:dataPreprocessingProtocol"]
    assert "1 approval(s)" in doc["rai:dataAnnotationProtocol"]
    assert "Fine-tuning a support assistant." in doc["rai:dataUseCases"]
    assert "English only; one product line." in doc["rai:dataLimitations"]
    assert "data-team" in doc["rai:dataReleaseMaintenancePlan"]
    assert snap["manifest_sha256"] in doc["citeAs"] and doc["license"] == ["CC-BY-4.0"]
    # Every fixture line was collected at the same instant: start = end, one value.
    assert [d.isoformat()[:19] for d in meta.data_collection_timeframe] == ["2026-03-01T10:00:00"]

    # Another export format: its fields and its own file hashes.
    alp = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/croissant", params={"format": "alpaca"}).json()
    _validated(alp)
    assert [x["name"] for x in alp["recordSet"][0]["field"]] == ["instruction", "input", "output"]
    assert alp["distribution"][0]["sha256"] != doc["distribution"][0]["sha256"]
    # A format with no description for an instruction snapshot: 422 naming it.
    r = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/croissant", params={"format": "trl"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_export_format"
    assert r.json()["error"]["details"][0]["message"] == "trl"
    assert api.as_("reviewer").get(f"/v1/snapshots/{snap['id']}/croissant").status_code == 403


@pytest.mark.parametrize("fmt", ["chat", "preference"])
def test_croissant_for_chat_and_preference(api, fmt):
    ds = new_dataset(api, fmt)
    if fmt == "chat":
        content = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
        export_format, names = "openai-chat", ["messages"]
    else:
        content = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
        export_format, names = "trl", ["prompt", "chosen", "rejected"]
    set_status(ingest(api, ds, [{**content, "provenance": {"source": "s", "source_ref": "x", "license": "MIT"}}]),
               "approved")
    snap = freeze(api, ds, validation_fraction=0.0)
    for f in ("pedigree", export_format):
        doc = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/croissant", params={"format": f}).json()
        _validated(doc)
        assert [d["@id"] for d in doc["distribution"]] == ["train.jsonl"]  # no validation members: no file
    got = [x["name"] for x in doc["recordSet"][0]["field"]]
    assert got == names
    msg = doc["recordSet"][0]["field"][0]
    assert msg["isArray"] is True and [s["name"] for s in msg["subField"]] == ["role", "content"]
