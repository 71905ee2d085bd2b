"""What a snapshot's records say about how its data were collected, prepared, annotated and examined: one
set of figures, computed from the stored rows through each domain's read API, that Croissant's RAI fields
(croissant.py) and a model version's technical documentation (app/governance) both render, so the two
documents can never disagree with each other or with the datasheet's tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.datasets.policies import DatasetDocumentation, ReviewPolicy
from app.dedup import queries as dedup_queries
from app.examples import queries as examples_queries
from app.models.snapshot import Snapshot, SnapshotMember
from app.pii import queries as pii_queries
from app.review import queries as review_queries
from app.snapshots import bias, repository


@dataclass
class SnapshotRecords:
    snapshot: Snapshot
    dataset: Any
    documentation: DatasetDocumentation
    erased: int
    batches: list[dict[str, Any]]
    scrub_models: list[dict[str, Any]]
    pii_findings: list[dict[str, Any]]
    pii_members_with_findings: int
    duplicates_left_out: dict[str, int]
    review_policy: dict[str, Any]
    reviews: dict[str, int]
    reviewers: int
    agreement: dict[str, Any]
    bias: dict[str, Any]
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, Any]:
        return self.snapshot.stats or {}


def gather(session: Session, snap: Snapshot, *, with_bias: bool = True) -> SnapshotRecords:
    ds = datasets.get(session, snap.dataset_id)
    members = repository.member_ids(snap.id)
    revisions = select(SnapshotMember.revision_id).where(SnapshotMember.snapshot_id == snap.id)
    batches = [{"batch": str(b[0]), "channel": b[1], "by": b[2], "at": str(b[3])[:19], "members": b[4]}
               for b in examples_queries.ingest_batches_of(session, members)]
    decisions: dict[str, int] = {}
    who: set[str] = set()
    for reviewer, decision, cnt in review_queries.decisions_by_reviewer(session, revisions):
        decisions[decision] = decisions.get(decision, 0) + cnt
        who.add(reviewer)
    multi, same = review_queries.agreement(session, revisions)
    return SnapshotRecords(
        snapshot=snap, dataset=ds, documentation=DatasetDocumentation.model_validate(ds.documentation or {}),
        erased=len(repository.erased_members(session, snap)),
        batches=batches,
        scrub_models=[{"model": m, "members": n} for m, n in pii_queries.scrub_models(session, members)],
        pii_findings=[{"entity_type": t, "operator": op, "findings": n, "false_positive": fp}
                      for t, op, n, fp in pii_queries.findings_by_type_and_operator(session, members)],
        pii_members_with_findings=pii_queries.count_with_findings(session, members),
        duplicates_left_out={m: n for m, n in dedup_queries.duplicates_by_method(session, ds.id, outside=members)},
        review_policy=ReviewPolicy.effective(ds.review_policy).full(),
        reviews=decisions, reviewers=len(who),
        agreement={"reviewed_more_than_once": multi, "unanimous": same,
                   "raw_agreement": round(same / multi, 4) if multi else None},
        bias=bias.compute(session, snap) if with_bias else {},
        excluded={k: v for k, v in (snap.counts.get("excluded") or {}).items() if v},
    )


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none recorded"


def collection_text(r: SnapshotRecords) -> str:
    st = r.stats
    ca = st.get("collected_at") or {}
    channels: dict[str, int] = {}
    for b in r.batches:
        channels[b["channel"]] = channels.get(b["channel"], 0) + b["members"]
    parts = [f"{r.snapshot.member_count:,} examples from sources: {_counts(st.get('sources', {}))}.",
             f"Licenses: {_counts(st.get('licenses', {}))}. Legal bases: {_counts(st.get('legal_bases', {}))}.",
             (f"Collected between {ca['min']} and {ca['max']} (provenance collected_at)." if ca.get("min")
              else "Collection dates: not recorded."),
             f"Ingested in {len(r.batches)} batch(es) through {_counts(channels)}."]
    if r.documentation.collection_notes:
        parts.append("Curator's notes: " + r.documentation.collection_notes)
    else:
        parts.append("How the source data were originally produced is outside Pedigree's records.")
    return " ".join(parts)


def preprocessing_text(r: SnapshotRecords) -> str:
    pii = (", ".join(f"{f['entity_type']} {f['findings']:,} ({f['operator']})" for f in r.pii_findings)
           or "no findings recorded")
    models = ", ".join(f"{m['model']} ({m['members']:,} members)" for m in r.scrub_models) or "not recorded"
    return (f"PII scrubbing (Presidio with spaCy and Pedigree's recognizers; engine model: {models}); findings "
            f"replaced by operator: {pii}. Near-duplicate removal (exact hash + MinHash LSH, verified Jaccard): "
            f"duplicates left out by method: {_counts(r.duplicates_left_out)}. Examples left out at freeze by rule: "
            f"{_counts(r.excluded)}. Split: deterministic by sha256(example id + seed), validation fraction "
            f"{r.snapshot.validation_fraction}.")


def annotation_text(r: SnapshotRecords) -> str:
    p = r.review_policy
    ag = r.agreement
    agree = (f"{ag['unanimous']:,} of {ag['reviewed_more_than_once']:,} revisions reviewed more than once got the "
             f"same decision from every reviewer ({ag['raw_agreement']:.1%} raw agreement)"
             if ag["reviewed_more_than_once"] else "no revision was reviewed by more than one reviewer")
    return (f"Human review: {p['required_approvals']} approval(s) from distinct reviewers required, four eyes "
            f"{'on' if p['four_eyes'] else 'off'} (no one approves what they ingested or edited), conflicts "
            f"resolved by {p['conflict_resolution']}; decisions on the frozen revisions: {_counts(r.reviews)} by "
            f"{r.reviewers} reviewer(s); {agree}.")


def sensitive_text(r: SnapshotRecords) -> str:
    types: dict[str, int] = {}
    for f in r.pii_findings:
        types[f["entity_type"]] = types.get(f["entity_type"], 0) + f["findings"]
    return (f"{r.pii_members_with_findings:,} of {r.snapshot.member_count:,} members held personal data that was "
            f"detected and replaced before freezing: {_counts(types)}. Raw values are kept only in an encrypted "
            f"vault readable by the admin role and deleted on erasure. Legal bases recorded for the members: "
            f"{_counts(r.stats.get('legal_bases', {}))}. Members erased since the freeze: {r.erased}. Detection is "
            "not perfect: residual personal data may remain (docs/pii.md gives the measured recall).")


def bias_text(r: SnapshotRecords) -> str:
    if not r.bias:
        return "Bias examination: not computed."
    lines = bias.summary_lines(r.bias)
    flags = r.bias["flags"]
    shown = "; ".join(f"{f['kind']} {f['dimension']}/{f['group']}"
                      + (f" in {f['source']}" if "source" in f else "") + f" {f['difference']:+.1%}"
                      for f in flags[:10])
    return (" ".join(x.strip() for x in lines) + (f". Flags: {shown}." if flags else ". No flags.")
            + " Method: lexicon counts per prompt/answer role, split, source and license, PMI with occupations and "
            "sentiment (docs/bias.md). Limits: " + " ".join(r.bias["limits"]))


def limitations_text(r: SnapshotRecords) -> str:
    own = r.documentation.limitations or "The curator has recorded no limitations."
    return (own + " Token counts are estimates. Bias figures are lexicon counts, not measurements of harm. "
            "Provenance is as declared at ingest; Pedigree verifies hashes, not the truth of the declared source.")


def use_cases_text(r: SnapshotRecords) -> str:
    uses = r.documentation.intended_uses or "Not recorded by the curator."
    out = r.documentation.out_of_scope_uses
    return f"Intended uses: {uses}" + (f" Out of scope: {out}" if out else "")


def maintenance_text(r: SnapshotRecords) -> str:
    who = r.documentation.maintainer or "not recorded"
    return (f"Maintainer: {who}. The snapshot is immutable (manifest sha256 {r.snapshot.manifest_sha256}); a member "
            "can only be erased (GDPR Art. 17), after which exports omit it and manifest.json says so. New data "
            "comes as a new snapshot.")
