from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.audit import service as audit
from app.core.auth import RAW_PII_READERS, Curator, Judge, RawPiiReader, Reader, check_role
from app.core.db import SessionDep
from app.core.errors import ValidationFailed
from app.core.openapi import errors
from app.datasets import service as datasets
from app.examples import service as examples
from app.pii import rescrub, service
from app.pii.schemas import (
    AllowIn,
    AllowResult,
    FindingList,
    MissedResult,
    MissedSpanIn,
    PiiPolicyIn,
    PiiPolicyOut,
    PiiReport,
    RawContent,
    VerdictIn,
    VerdictResult,
    effective_policy,
)

router = APIRouter(tags=["pii"])



@router.get("/v1/examples/{example_id}/raw", response_model=RawContent, responses=errors(409))
def get_raw(example_id: str, session: SessionDep, actor: RawPiiReader) -> dict[str, Any]:
    """The raw (pre-scrub) content. Admin only; every call is an audit event."""
    return service.reveal_raw(session, example_id=example_id, actor=actor)


@router.get("/v1/examples/{example_id}/pii-findings", response_model=FindingList)
def list_findings(example_id: str, session: SessionDep, actor: Reader) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    return {"revision_id": str(ex.current_revision_id),
            "items": [service.finding_view(f) for f in service.findings_for(session, ex.current_revision_id)]}


@router.post("/v1/examples/{example_id}/pii-findings/{finding_id}/verdict", response_model=VerdictResult,
             responses=errors(409))
def post_verdict(example_id: str, finding_id: str, body: VerdictIn, session: SessionDep, actor: Judge) -> dict:
    """`false_positive` restores the span's raw text from the vault into a new revision."""
    return service.set_verdict(session, example_id=example_id, finding_id=finding_id, verdict=body.verdict,
                               actor=actor)


@router.post("/v1/examples/{example_id}/pii-findings", status_code=201, response_model=MissedResult,
             responses=errors(409))
def post_missed(example_id: str, body: MissedSpanIn, session: SessionDep, actor: Judge) -> dict:
    """A span the scrubber missed (offsets in the current revision's text): scrubbed in a new revision."""
    return service.add_missed(session, example_id=example_id, field_path=body.field_path, start=body.start,
                              end=body.end, entity_type=body.entity_type, actor=actor)


@router.get("/v1/datasets/{dataset_ref}/pii-report", response_model=PiiReport)
def get_report(dataset_ref: str, session: SessionDep, actor: Judge, top: int = Query(20, ge=1, le=200),
               reveal: bool = Query(False)) -> dict[str, Any]:
    """Counts per entity type and verdict, and the `top` most frequent scrubbed values per type as tokens.
    `reveal=true` (admin only, audited) adds each value itself, decrypted from the vault."""
    if reveal:
        check_role(actor, RAW_PII_READERS, "read raw PII values")
    return service.report(session, dataset_ref=dataset_ref, actor=actor, top=top, reveal=reveal)


@router.post("/v1/datasets/{dataset_ref}/pii-policy/allow-list", response_model=AllowResult)
def post_allow(dataset_ref: str, body: AllowIn, session: SessionDep, actor: Curator) -> dict[str, Any]:
    """Allow a value (or the value behind a token from the report) and re-scrub, in the background, the
    examples whose current revision scrubbed it."""
    ds = datasets.get(session, dataset_ref)
    return service.allow_value(session, ds=ds, actor=actor, value=body.value, token=body.token)


def _policy_out(ds) -> dict[str, Any]:
    return {**service.policy_of(ds).model_dump(mode="json"), "pii_profile": ds.pii_profile}


@router.get("/v1/datasets/{dataset_ref}/pii-policy", response_model=PiiPolicyOut)
def get_policy(dataset_ref: str, session: SessionDep, actor: Reader) -> dict[str, Any]:
    """The effective policy: the dataset's profile with what it stores laid over it, every default filled in,
    and the profile's name (`pii_profile`)."""
    ds = datasets.get(session, dataset_ref)
    return _policy_out(ds)


@router.put("/v1/datasets/{dataset_ref}/pii-policy", response_model=PiiPolicyOut)
def put_policy(dataset_ref: str, policy: PiiPolicyIn, session: SessionDep, actor: Curator) -> dict[str, Any]:
    """Replace the policy (laid over the profile; `pii_profile` may switch the profile too). New examples are
    scrubbed under it, and the scrubbed ones are re-scrubbed in the background (a new revision only where
    the output changes; changed approved examples go back to review)."""
    ds = datasets.get(session, dataset_ref)
    stored = policy.model_dump(mode="json", exclude_unset=True, exclude={"pii_profile"})
    profile = policy.pii_profile or ds.pii_profile
    try:
        effective_policy(profile, stored)
    except ValueError as exc:
        raise ValidationFailed("the policy does not fit the dataset's pii_profile", details=[
            {"field": "pii_policy", "code": "invalid", "message": str(exc)}]) from None
    ds.pii_policy = stored
    ds.pii_profile = profile
    session.flush()
    audit.record(session, actor=actor.ref, action="dataset.pii_policy_set", entity_type="dataset",
                 entity_id=ds.id, payload={"pii_policy": stored, "pii_profile": profile})
    rescrub.request(session, ds, actor=actor, reason="policy_changed")
    return _policy_out(ds)
