"""Croissant 1.1 JSON-LD with the RAI vocabulary for one snapshot (`GET /v1/snapshots/{id}/croissant`).

Data catalogues (Hugging Face, Kaggle, OpenML, Dataverse) read Croissant; its RAI extension names the
responsible-AI facts an EU AI Act Art. 10 file asks for. Every value here is generated from records
(records.py): the distribution lists one export file per split with its URL and sha256 (computed by
streaming that exact export), the record sets describe the fields of the chosen export format for the
snapshot's task, and the `rai:` properties are the texts records.py writes from provenance, scrubs,
dedup links, reviews, PII findings and the bias report, plus what the curator recorded as intended uses
and limitations. `mlcroissant` validates the document in the tests.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import ValidationFailed
from app.models.snapshot import Snapshot
from app.snapshots import export, records

CONFORMS_TO = ["http://mlcommons.org/croissant/1.1", "http://mlcommons.org/croissant/RAI/1.0"]
CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
MESSAGES = ("messages", [("role", "$.role"), ("content", "$.content")])

# (export format, task format) -> the fields of one JSON line: (name, JSON path) for a string, or
# (name, JSON path, sub-fields) for an array of message objects.
_CONTENT = {"chat": [("messages", "$.content.messages", MESSAGES[1])],
            "instruction": [("instruction", "$.content.instruction"), ("input", "$.content.input"),
                            ("output", "$.content.output")],
            "completion": [("prompt", "$.content.prompt"), ("completion", "$.content.completion")],
            "preference": [("prompt", "$.content.prompt"), ("chosen", "$.content.chosen"),
                           ("rejected", "$.content.rejected")]}
_PEDIGREE = [("revision_id", "$.revision_id"), ("example_id", "$.example_id"), ("split", "$.split"),
             ("content_sha256", "$.content_sha256")]
FIELDS: dict[tuple[str, str], list[tuple]] = {
    **{("pedigree", t): _PEDIGREE + c for t, c in _CONTENT.items()},
    **{("openai-chat", t): [("messages", "$.messages", MESSAGES[1])] for t in ("chat", "instruction", "completion")},
    **{("alpaca", t): [("instruction", "$.instruction"), ("input", "$.input"), ("output", "$.output")]
       for t in ("instruction", "completion")},
    **{("completion", t): [("prompt", "$.prompt"), ("completion", "$.completion")]
       for t in ("instruction", "completion")},
    ("trl", "preference"): [("prompt", "$.prompt", MESSAGES[1]), ("chosen", "$.chosen", MESSAGES[1]),
                            ("rejected", "$.rejected", MESSAGES[1])],
    ("openai-dpo", "preference"): [("input", "$.input.messages", MESSAGES[1]),
                                   ("preferred_output", "$.preferred_output", MESSAGES[1]),
                                   ("non_preferred_output", "$.non_preferred_output", MESSAGES[1])],
}


def formats_for(task: str) -> list[str]:
    return [f for (f, t) in FIELDS if t == task]


def check_format(snap: Snapshot, fmt: str) -> None:
    if (fmt, snap.format) not in FIELDS:
        raise ValidationFailed(
            f"no export format {fmt!r} Croissant can describe for a {snap.format} snapshot; one of "
            f"{', '.join(formats_for(snap.format))}", code="no_export_format",
            details=[{"field": "format", "code": "no_export_format", "message": fmt}])


def export_sha256(session: Session, snap: Snapshot, fmt: str, split: str) -> tuple[str, int, int]:
    """(sha256, bytes, members) of exactly what `GET …/export?format=fmt&split=split` streams."""
    plan = export.plan_export(session, snap, split=split)
    h, size = hashlib.sha256(), 0
    for chunk in export.stream_jsonl(fmt, plan.dataset_format, export.iter_pedigree_blocks(plan)):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size, plan.count


def _field(rs: str, file_id: str, spec: tuple) -> dict[str, Any]:
    name, path = spec[0], spec[1]
    out: dict[str, Any] = {"@type": "cr:Field", "@id": f"{rs}/{name}", "name": name}
    if len(spec) == 2:
        out.update(dataType="sc:Text", source={"fileObject": {"@id": file_id}, "extract": {"jsonPath": path}})
        return out
    # An array of message objects: Croissant 1.1's isArray with one sub-field per key.
    out.update(isArray=True, dataType="sc:Text",
               source={"fileObject": {"@id": file_id}, "extract": {"jsonPath": path}},
               subField=[{"@type": "cr:Field", "@id": f"{rs}/{name}/{sub}", "name": sub, "dataType": "sc:Text",
                          "source": {"fileObject": {"@id": file_id}, "extract": {"jsonPath": f"{path}[*]{p[1:]}"}}}
                         for sub, p in spec[2]])
    return out


def document(session: Session, snap: Snapshot, *, fmt: str = "pedigree") -> dict[str, Any]:
    check_format(snap, fmt)
    r = records.gather(session, snap)
    base = get_settings().api_url.rstrip("/")
    st = snap.stats or {}
    files, sets = [], []
    for split in ("train", "validation"):
        sha, size, count = export_sha256(session, snap, fmt, split)
        if not count:
            continue
        fid = f"{split}.jsonl"
        files.append({"@type": "cr:FileObject", "@id": fid, "name": fid,
                      "description": f"the {split} split as {fmt} JSON lines ({count:,} examples)",
                      "contentUrl": f"{base}/v1/snapshots/{snap.id}/export?format={fmt}&split={split}",
                      "encodingFormat": "application/jsonlines", "sha256": sha, "contentSize": f"{size} B"})
        sets.append({"@type": "cr:RecordSet", "@id": split, "name": split,
                     "description": f"one record per example of the {split} split",
                     "field": [_field(split, fid, spec) for spec in FIELDS[(fmt, snap.format)]]})
    ca = st.get("collected_at") or {}
    ds = r.dataset
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "@id": f"{base}/v1/snapshots/{snap.id}",
        "name": f"{ds.name}-{snap.name}",
        "description": (ds.description or f"Snapshot {snap.name} of dataset {ds.name}")
        + f" ({snap.format} format, {snap.member_count:,} examples, manifest sha256 {snap.manifest_sha256}).",
        "url": f"{base}/v1/snapshots/{snap.id}",
        "version": "1.0.0",
        "datePublished": snap.created_at.date().isoformat(),
        "creator": {"@type": "sc:Person", "name": snap.created_by},
        "license": sorted(st.get("licenses", {})) or ["not recorded"],
        "citeAs": f"{ds.name}/{snap.name}, Pedigree snapshot {snap.id}, manifest sha256 {snap.manifest_sha256}",
        "isLiveDataset": False,
        "keywords": ["fine-tuning", snap.format, "governed"],
        "identifier": f"sha256:{snap.manifest_sha256}",
        "distribution": files,
        "recordSet": sets,
        "rai:dataCollection": records.collection_text(r),
        "rai:dataCollectionType": "Others: curated imports and API submissions with declared provenance",
        "rai:dataCollectionRawData": "Raw text of scrubbed examples is kept only in Pedigree's encrypted vault.",
        "rai:dataPreprocessingProtocol": records.preprocessing_text(r),
        "rai:dataAnnotationProtocol": records.annotation_text(r),
        "rai:dataAnnotationPlatform": "Pedigree review queue (leased, four-eyes, reason codes)",
        "rai:annotationsPerItem": (f"{sum(r.reviews.values()) / snap.member_count:.2f} decisions per example"
                                   if snap.member_count else "0"),
        "rai:machineAnnotationTools": ["Presidio (PII)", "spaCy NER", "MinHash LSH (near duplicates)"],
        "rai:personalSensitiveInformation": records.sensitive_text(r),
        "rai:dataBiases": records.bias_text(r),
        "rai:dataLimitations": records.limitations_text(r),
        "rai:dataUseCases": records.use_cases_text(r),
        "rai:dataReleaseMaintenancePlan": records.maintenance_text(r),
    }
    if ca.get("min"):
        # Start and end of collection; one value when every member was collected at the same time.
        doc["rai:dataCollectionTimeFrame"] = list(dict.fromkeys([ca["min"], ca["max"]]))
    if r.documentation.out_of_scope_uses or r.documentation.intended_uses:
        doc["rai:dataSocialImpact"] = records.use_cases_text(r)
    return doc
