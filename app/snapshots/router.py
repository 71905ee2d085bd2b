from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from app.audit import service as audit
from app.core.auth import Curator, SnapshotReader
from app.core.db import SessionDep, get_engine
from app.core.errors import ValidationFailed
from app.core.openapi import binary, errors
from app.core.sql import is_pg
from app.lineage import openlineage
from app.models.snapshot import Snapshot
from app.snapshots import bias, croissant, datasheet, diff, export, formats, freeze, jobs, proofs, repository
from app.snapshots.schemas import (
    EXPORT_FORMATS,
    BiasReport,
    Manifest,
    MembershipProof,
    MembershipProofs,
    ProofsRequest,
    SnapshotCreate,
    SnapshotDiff,
    SnapshotOut,
    SnapshotPage,
    SnapshotView,
)

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])

# Reviewers work on examples, not on frozen sets; trainers and auditors read and export.

MEDIA = {"parquet": "application/vnd.apache.parquet"}
EXT = {"parquet": "parquet"}
EXPORT = {200: binary("application/x-ndjson", "application/vnd.apache.parquet",
                      description="JSON lines in the asked format, or Parquet with format=parquet; the "
                                  "X-Manifest-SHA256 and X-Export-Manifest-SHA256 headers name what it holds")}
DATASHEET = {200: binary("text/markdown", "text/html", description="The datasheet: Markdown, or HTML with "
                                                                  "format=html")}


def _out(snap: Snapshot, *, stats: bool = True) -> dict[str, Any]:
    out = SnapshotOut.model_validate(snap, from_attributes=True)
    if not stats:
        out.stats = None
    return out.model_dump(mode="json")


@router.post("", status_code=201, response_model=SnapshotView, responses=errors(404, 409))
def create_snapshot(data: SnapshotCreate, session: SessionDep, actor: Curator,
                    background: BackgroundTasks) -> dict[str, Any]:
    # Hook (lineage issue): OpenLineage START/COMPLETE/FAIL around the freeze; a no-op unless configured.
    with openlineage.snapshot_freeze(session, dataset_ref=data.dataset_id, name=data.name) as ol:
        ol.snapshot = freeze.create(session, data=data, actor=actor)
    if ol.snapshot.merkle_root is None:
        # A large freeze on PostgreSQL: the root follows right after the response (after the commit,
        # so it reads the committed members), outside the freeze's time.
        background.add_task(jobs.fill_merkle_root, ol.snapshot.id)
    return _out(ol.snapshot)


@router.get("", response_model=SnapshotPage, responses=errors(404))
def list_snapshots(session: SessionDep, actor: SnapshotReader, dataset: str | None = None,
                   cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows, nxt = repository.list_page(session, dataset_ref=dataset, cursor=cursor, limit=limit)
    return {"items": [_out(s, stats=False) for s in rows], "next_cursor": nxt}


@router.get("/{snapshot_id}", response_model=SnapshotView)
def get_snapshot(snapshot_id: str, session: SessionDep, actor: SnapshotReader) -> dict[str, Any]:
    snap = repository.get(session, snapshot_id)
    proofs.ensure_merkle_root(session, snap)
    out = _out(snap)
    erased = repository.erased_members(session, snap)
    out["erased_members"] = len(erased)
    out["contains_erased"] = bool(snap.contains_erased or erased)
    return out


@router.get("/{snapshot_id}/manifest.json", response_model=Manifest)
def get_manifest(snapshot_id: str, session: SessionDep, actor: SnapshotReader, response: Response) -> dict[str, Any]:
    snap = repository.get(session, snapshot_id)
    proofs.ensure_merkle_root(session, snap)
    response.headers["X-Manifest-SHA256"] = snap.manifest_sha256
    return repository.manifest_document(session, snap)


@router.get("/{snapshot_id}/proof", response_model=MembershipProof, responses=errors(409))
def membership_proof(snapshot_id: str, session: SessionDep, actor: SnapshotReader, response: Response,
                     example_id: str | None = None, revision_id: str | None = None) -> dict[str, Any]:
    """RFC 6962 inclusion proof of one member against the snapshot's Merkle root; check it with
    `pedigree snapshot verify-proof` or the dozen lines in docs/snapshots.md."""
    snap = repository.get(session, snapshot_id)
    proof = proofs.membership_proof(session, snap, example_id=example_id, revision_id=revision_id)
    response.headers.update({"X-Manifest-SHA256": snap.manifest_sha256, "X-Merkle-Root": proof["merkle_root"]})
    return proof


@router.post("/{snapshot_id}/proofs", response_model=MembershipProofs, responses=errors(409))
def membership_proofs(snapshot_id: str, data: ProofsRequest, session: SessionDep, actor: SnapshotReader,
                      response: Response) -> dict[str, Any]:
    """Inclusion proofs of many members (up to 10,000) from one build of the tree, each in the single
    proof's shape; members not in the snapshot or erased since are listed under `refused`."""
    snap = repository.get(session, snapshot_id)
    field, values = ("example_id", data.example_ids) if data.example_ids is not None else \
        ("revision_id", data.revision_ids)
    out = proofs.membership_proofs(session, snap, field=field, values=values or [])
    response.headers.update({"X-Manifest-SHA256": snap.manifest_sha256, "X-Merkle-Root": out["merkle_root"]})
    return out


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValidationFailed(f"unknown {field}; one of {', '.join(allowed)}",
                               details=[{"field": field, "code": "invalid", "message": f"one of {', '.join(allowed)}"}])


@router.get("/{snapshot_id}/export", response_class=StreamingResponse, responses=EXPORT)
def export_snapshot(snapshot_id: str, session: SessionDep, actor: SnapshotReader, format: str = "pedigree",
                    split: str = "all") -> StreamingResponse:
    _check_choice("format", format, EXPORT_FORMATS)
    _check_choice("split", split, ("all", "train", "validation"))
    snap = repository.get(session, snapshot_id)
    if format in formats.PREFERENCE_ONLY and snap.format != "preference":
        raise ValidationFailed(f"the {format} export needs a preference snapshot; this one is {snap.format}",
                               code="format_mismatch",
                               details=[{"field": "format", "code": "format_mismatch",
                                         "message": f"{format} holds preference pairs only"}])
    plan = export.plan_export(session, snap, split=split)
    # Who took a copy of the data, and of exactly what, belongs in the audit trail.
    audit.record(session, actor=actor.ref, action="snapshot.exported", entity_type="snapshot", entity_id=snap.id,
                 payload={"format": format, "split": split, "members": plan.count,
                          "export_manifest_sha256": plan.export_manifest_sha256,
                          "omitted_erased": len(plan.omitted_erased)})
    headers = {
        "X-Manifest-SHA256": plan.manifest_sha256,
        "X-Export-Manifest-SHA256": plan.export_manifest_sha256,
        "X-Member-Count": str(plan.count),
        "X-Erased-Omitted": str(len(plan.omitted_erased)),
        "Content-Disposition": f'attachment; filename="{snap.name}.{split}.{EXT.get(format, "jsonl")}"',
    }
    if format == "parquet":
        meta = {"pedigree.manifest_sha256": plan.manifest_sha256,
                "pedigree.export_manifest_sha256": plan.export_manifest_sha256, "pedigree.snapshot_id": str(snap.id)}
        # Larger blocks for Parquet: each becomes one row group.
        pg = is_pg(get_engine())
        if pg and plan.dataset_format in export.FLAT_FIELDS:
            blocks = export.iter_csv_blocks(plan, export.FLAT_FIELDS[plan.dataset_format])
            body = export.stream_parquet(plan.dataset_format, blocks, metadata=meta, csv=True)
        elif pg:
            blocks = export.iter_pedigree_blocks(plan, block_rows=10_000)
            body = export.stream_parquet(plan.dataset_format, blocks, metadata=meta)
        else:
            # 5,000 members a row group: with 10,000 the export ran no faster and its peak memory was
            # ~40 MB higher (measured on 100k members).
            body = export.stream_parquet(plan.dataset_format, export.iter_column_blocks(plan, block_rows=5000),
                                         metadata=meta, columns=True)
    else:
        body = export.stream_jsonl(format, plan.dataset_format, export.iter_pedigree_blocks(plan))
    return StreamingResponse(body, media_type=MEDIA.get(format, "application/x-ndjson"), headers=headers)


@router.get("/{snapshot_id}/bias-report", response_model=BiasReport)
def bias_report(snapshot_id: str, session: SessionDep, actor: SnapshotReader) -> dict[str, Any]:
    """Representation of demographic descriptors per role, split, source and license, their co-occurrence
    with occupations and sentiment (PMI with counts), and flags over the dataset's threshold (docs/bias.md)."""
    return bias.compute(session, repository.get(session, snapshot_id))


class JsonLdResponse(JSONResponse):
    media_type = "application/ld+json"


# A JSON-LD document in an outside vocabulary (Croissant 1.1 with RAI), checked against the reference
# implementation (mlcroissant) in tests/snapshots/test_croissant.py rather than restated as a model here.
CROISSANT = {200: {"description": "Croissant 1.1 JSON-LD with the RAI vocabulary", "content": {
    "application/ld+json": {"schema": {
        "type": "object", "required": ["@context", "@type", "conformsTo", "name", "distribution", "recordSet"],
        "properties": {"@context": {"type": "object"}, "@type": {"type": "string"},
                       "conformsTo": {"type": "string"}, "name": {"type": "string"},
                       "distribution": {"type": "array", "items": {"type": "object"}},
                       "recordSet": {"type": "array", "items": {"type": "object"}}}}}}}}


@router.get("/{snapshot_id}/croissant", response_class=JsonLdResponse, responses=CROISSANT)
def get_croissant(snapshot_id: str, session: SessionDep, actor: SnapshotReader, format: str = "pedigree") -> JSONResponse:
    """Croissant 1.1 metadata (`application/ld+json`): the export files of `format` with their URLs and sha256,
    record sets per the snapshot's task, and RAI fields generated from the records. 422 `no_export_format`
    when `format` has no Croissant description for the snapshot's task."""
    snap = repository.get(session, snapshot_id)
    doc = croissant.document(session, snap, fmt=format)
    return JsonLdResponse(doc, headers={"X-Manifest-SHA256": snap.manifest_sha256})


@router.get("/{snapshot_id}/datasheet", response_class=HTMLResponse, responses=DATASHEET)
def get_datasheet(snapshot_id: str, session: SessionDep, actor: SnapshotReader, format: str = "md") -> Response:
    _check_choice("format", format, ("md", "html"))
    snap = repository.get(session, snapshot_id)
    facts = datasheet.gather(session, snap)
    headers = {"X-Manifest-SHA256": snap.manifest_sha256}
    if format == "html":
        return HTMLResponse(datasheet.render_html(facts), headers=headers)
    return PlainTextResponse(datasheet.render_markdown(facts), media_type="text/markdown; charset=utf-8",
                             headers=headers)


@router.get("/{a}/diff/{b}", response_model=SnapshotDiff)
def diff_snapshots(a: str, b: str, session: SessionDep, actor: SnapshotReader, change: str | None = None,
                   cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return diff.diff(session, repository.get(session, a), repository.get(session, b), change=change, cursor=cursor,
                        limit=limit)
