"""Erasure requests (GDPR Art. 17) that reach the models.

A request selects examples (source refs, a metadata value, or, admin only, a value found in the raw
text), previews or executes, and reports what it touched: examples, the snapshots holding them, the
model versions trained on them and the aliases serving those versions.

Execution (`app.lineage.jobs`) runs one transaction per batch of examples, each with its audit event,
so a request over 100,000 examples never holds one giant transaction, and a crash leaves a `running`
request that the same POST resumes (already-erased examples are simply not selected again). Per
batch (`erase_batch`):
  - the vault entries are deleted (the raw text is gone for good);
  - every revision's content becomes a tombstone, its `content_sha256` kept, so snapshot manifests and
    the audit chain, which commit to hashes, still verify;
  - the examples become `erased` (metadata cleared: it is where subject identifiers live);
  - every snapshot holding one is marked `contains_erased` (exports omit erased members from then on);
  - every model version trained on one becomes `tainted`, with the request id in model_version_taints;
  - the free text people wrote about them (review comments, pairwise-review comments, machine suggestions'
    comments, edit comments on revisions) is replaced by a redaction marker: it may quote the subject's
    data. The rows stay (decision, reviewer, reason code, time: the review record and its statistics).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter, defaultdict
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, check_role, scope_actor
from app.core.config import get_settings
from app.core.errors import Conflict, NotFound
from app.core.ids import id_or_404
from app.core.sql import any_of, dialect_insert, is_pg, iso
from app.datasets import service as datasets
from app.examples import privacy
from app.lineage import retest
from app.lineage import service as lineage
from app.lineage import training as tr
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupEvalNgram
from app.models.example import Example, ExampleRevision
from app.models.lineage import ErasureRequest, ModelVersionTaint
from app.models.pii import PiiFinding, PiiVaultEntry
from app.models.review import PairwiseJudgment, Review, ReviewSuggestion
from app.models.snapshot import Snapshot, SnapshotMember

log = logging.getLogger(__name__)

SEARCH_BATCH = 2000


class Selector(BaseModel):
    source_refs: list[str] | None = Field(None, min_length=1, max_length=100_000)
    metadata: dict[str, str | int | float | bool] | None = Field(None, min_length=1, max_length=20)
    raw_text_contains: str | None = Field(None, min_length=3, max_length=1000)
    # Optional narrowing: refs are only unique within a dataset and source.
    dataset_id: uuid.UUID | None = None
    source: str | None = None

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _exactly_one(self) -> Selector:
        given = [k for k in ("source_refs", "metadata", "raw_text_contains") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of source_refs, metadata, raw_text_contains")
        return self

    @field_validator("raw_text_contains")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and len(v.strip()) < 3:
            raise ValueError("at least 3 non-blank characters")
        return v

    def canonical(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.source_refs is not None:
            out["source_refs"] = sorted(set(self.source_refs))
        if self.metadata is not None:
            out["metadata"] = dict(sorted(self.metadata.items()))
        if self.raw_text_contains is not None:
            out["raw_text_contains"] = self.raw_text_contains
        if self.dataset_id is not None:
            out["dataset_id"] = str(self.dataset_id)
        if self.source is not None:
            out["source"] = self.source
        return out

    def sha256(self) -> str:
        return hashlib.sha256(orjson.dumps(self.canonical(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    def redacted(self) -> dict[str, Any]:
        """What is stored and shown: the selector names the very person being erased, so a raw-text needle
        keeps only its hash, and refs and metadata values their provenance pseudonyms (`hmac:…`, the form
        every non-admin view shows them in, so a request still lines up with the examples it matched)."""
        out = self.canonical()
        if "source_refs" in out:
            out["source_refs"] = sorted({privacy.pseudonym(r) for r in out["source_refs"]})
        if "metadata" in out:
            out["metadata"] = {k: privacy.mask_value(v) for k, v in out["metadata"].items()}
        if "raw_text_contains" in out:
            needle = out.pop("raw_text_contains")
            out["raw_text_contains_sha256"] = hashlib.sha256(needle.encode()).hexdigest()
        return out


class ErasureCreate(BaseModel):
    selector: Selector
    reason: str = Field(min_length=1, max_length=2000)
    dry_run: bool = False
    confirm: bool = False


# ---------------------------------------------------------------------------------------------------------
# Selection


def _scope(q, sel: Selector):
    if sel.dataset_id is not None:
        q = q.where(Example.dataset_id == sel.dataset_id)
    if sel.source is not None:
        q = q.where(Example.source == sel.source)
    return q


def _metadata_cond(session: Session, meta: dict[str, Any]):
    if is_pg(session):
        from sqlalchemy import text

        return text("examples.metadata @> CAST(:meta AS jsonb)").bindparams(meta=orjson.dumps(meta).decode())
    conds = []
    for k, v in meta.items():
        path = '$."' + k.replace('"', '\\"') + '"'
        conds.append(func.json_extract(Example.meta, path) == (int(v) if isinstance(v, bool) else v))
    return conds


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _contains(content: Any, needle: str) -> bool:
    return any(needle in s.casefold() for s in _strings(content))


def _raw_text_matches(session: Session, sel: Selector) -> set[uuid.UUID]:
    """Examples whose raw text (the vault) or any stored revision contains the needle, case-insensitive.
    The vault is encrypted, so it is decrypted batch by batch here: a full pass over the scope's vault,
    which is why this selector is admin-only and best narrowed with dataset_id."""
    from app.pii import service as pii

    needle = sel.raw_text_contains.casefold()
    found: set[uuid.UUID] = set()
    ring = pii.key_ring(session)
    last: uuid.UUID | None = None
    while True:
        q = select(PiiVaultEntry.id, PiiVaultEntry.example_id, PiiVaultEntry.revision_id, PiiVaultEntry.key_id,
                   PiiVaultEntry.ciphertext).join(Example, Example.id == PiiVaultEntry.example_id)
        q = _scope(q, sel)
        if last is not None:
            q = q.where(PiiVaultEntry.id > last)
        rows = session.execute(q.order_by(PiiVaultEntry.id).limit(SEARCH_BATCH)).all()
        if not rows:
            break
        for r in rows:
            if r.example_id in found:
                continue
            plain = ring.open(pii.vault.Sealed(r.key_id, r.ciphertext), aad=pii._aad(r.example_id, r.revision_id))
            if _contains(orjson.loads(plain), needle):
                found.add(r.example_id)
        last = rows[-1].id

    # Revisions never vaulted hold their text in the clear (nothing was found in them, or a reviewer
    # edited one): a LIKE prefilter in the database, the exact test here.
    q = select(ExampleRevision.example_id, ExampleRevision.content).join(
        Example, Example.id == ExampleRevision.example_id).where(Example.status != "erased")
    q = _scope(q, sel)
    if sel.raw_text_contains.isascii() and not set('"\\') & set(sel.raw_text_contains):
        like = "%" + sel.raw_text_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        from sqlalchemy import String, cast

        col = cast(ExampleRevision.content, String)
        q = q.where(col.ilike(like, escape="\\"))
    for eid, content in session.execute(q).yield_per(SEARCH_BATCH):
        if eid not in found and _contains(content, needle):
            found.add(eid)
    return found


def select_examples(session: Session, sel: Selector, actor: Actor) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    """(example_id, dataset_id, status) of every example the selector matches, erased ones included; only
    in the workspaces where the caller is a curator (a selector never reaches another team's data)."""
    rows = _select_examples(session, sel, actor)
    mine = datasets.visible_dataset_ids(session, ("curator",))
    if mine is None:
        return rows
    keep = set(session.scalars(mine))
    return [r for r in rows if r[1] in keep]


def visible_dataset_strs(session: Session) -> set[str] | None:
    q = datasets.visible_dataset_ids(session)
    return None if q is None else {str(i) for i in session.scalars(q)}


def may_see(session: Session, req: ErasureRequest, visible: set[str] | None) -> bool:
    """A request is seen where one of the workspaces it is about is (the datasets it touched, for requests
    from before workspaces were recorded on it); one about none, by its requester."""
    if visible is None:
        return True
    rep = req.report or {}
    if rep.get("workspaces"):
        from app.core.auth import visible_workspaces

        return bool(set(rep["workspaces"]) & {str(w) for w in visible_workspaces(session) or ()})
    touched = set(rep.get("datasets", {}))
    if touched:
        return bool(touched & visible)
    actor = scope_actor(session)
    return actor is not None and req.requested_by == actor.ref


def _select_examples(session: Session, sel: Selector, actor: Actor) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    if sel.raw_text_contains is not None:
        check_role(actor, (), "search raw text (it reads the PII vault)")
        ids = sorted(_raw_text_matches(session, sel))
        rows = []
        for i in range(0, len(ids), SEARCH_BATCH):
            rows += session.execute(select(Example.id, Example.dataset_id, Example.status)
                                    .where(Example.id.in_(ids[i:i + SEARCH_BATCH]))).all()
        return [tuple(r) for r in rows]
    q = select(Example.id, Example.dataset_id, Example.status)
    if sel.source_refs is not None:
        refs = sorted(set(sel.source_refs))
        rows = []
        for i in range(0, len(refs), SEARCH_BATCH):
            rows += session.execute(_scope(q.where(Example.source_ref.in_(refs[i:i + SEARCH_BATCH])), sel)).all()
        return [tuple(r) for r in rows]
    cond = _metadata_cond(session, sel.metadata)
    q = q.where(*cond) if isinstance(cond, list) else q.where(cond)
    return [tuple(r) for r in session.execute(_scope(q, sel)).all()]


def check_breadth(session: Session, matched: list[tuple[uuid.UUID, uuid.UUID, str]], confirm: bool) -> None:
    if confirm or len(matched) <= 1:
        return
    cfg = get_settings().erasure
    per_ds = Counter(ds for _, ds, _ in matched)
    totals = dict(session.execute(select(Example.dataset_id, func.count())
                                  .where(Example.dataset_id.in_(list(per_ds))).group_by(Example.dataset_id)).all())
    names = dict(session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(list(per_ds)))).all())
    broad = [{"dataset_id": str(ds), "dataset": names.get(ds), "matched": n, "examples": totals.get(ds, 0),
              "share": round(n / max(totals.get(ds, 1), 1), 4)}
             for ds, n in per_ds.items() if n > cfg.confirm_share * totals.get(ds, 0)]
    if broad or len(matched) > cfg.confirm_max_examples:
        raise Conflict(
            f"the selector matches {len(matched)} example(s), more than the configured share "
            f"({cfg.confirm_share:.0%} of a dataset) or count ({cfg.confirm_max_examples}); "
            "preview it with dry_run=true and resend with confirm=true",
            code="confirmation_required",
            details={"matched": len(matched), "datasets": broad, "confirm_share": cfg.confirm_share,
                     "confirm_max_examples": cfg.confirm_max_examples})


# ---------------------------------------------------------------------------------------------------------
# Impact


def impact(session: Session, example_ids: list[uuid.UUID], dataset_ids: set[uuid.UUID]) -> dict[str, Any]:
    """Snapshots, model versions and aliases the erasure of these examples reaches, and the plan the
    batches follow (which snapshots each example's erasure flags).

    Lineage comes first: it is one index-only lookup, and each version found names its run's snapshot,
    which therefore holds the example (a run trains only members of its snapshot). Only the other
    snapshots of the same datasets are probed for membership. Probing is the expensive part (one index
    descent per example per snapshot partition): at 100 snapshots and 10,000 examples, a million."""
    mv_counts: Counter[uuid.UUID] = Counter()
    mv_snapshot: dict[uuid.UUID, uuid.UUID] = {}
    pg = is_pg(session)
    step = 50_000 if pg else SEARCH_BATCH
    ln, mv, run = tr.lineage, tr.model_versions, tr.training_runs
    for i in range(0, len(example_ids), step):
        mv_counts.update(dict(session.execute(select(ln.c.model_version_id, func.count())
                                              .where(any_of(ln.c.example_id, example_ids[i:i + step], pg=pg))
                                              .group_by(ln.c.model_version_id)).all()))
    if mv_counts:
        mv_snapshot = dict(session.execute(select(mv.c.id, run.c.snapshot_id).join(run, run.c.id == mv.c.run_id)
                                           .where(any_of(mv.c.id, list(mv_counts), pg=pg))).all())
    snap_ids: set[uuid.UUID] = set(mv_snapshot.values())
    # example -> the other snapshots holding it: each batch flags its snapshots from this and from its
    # versions' snapshots, instead of probing every partition again.
    members: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    others = [sid for sid in session.scalars(select(Snapshot.id).where(Snapshot.dataset_id.in_(list(dataset_ids))))
              if sid not in snap_ids] if dataset_ids else []
    if others:
        for i in range(0, len(example_ids), step):
            for sid, eid in session.execute(
                    select(SnapshotMember.snapshot_id, SnapshotMember.example_id)
                    .where(any_of(SnapshotMember.snapshot_id, others, pg=pg),
                           any_of(SnapshotMember.example_id, example_ids[i:i + step], pg=pg))):
                snap_ids.add(sid)
                members[eid].append(sid)
    snaps = [{"id": str(s.id), "name": s.name, "dataset_id": str(s.dataset_id),
              "manifest_sha256": s.manifest_sha256}
             for s in session.scalars(select(Snapshot).where(Snapshot.id.in_(list(snap_ids)))
                                      .order_by(Snapshot.created_at))] if snap_ids else []
    mvs = lineage.model_version_views(session, list(mv_counts),
                                      extra={k: {"erased_examples": n} for k, n in mv_counts.items()}) \
        if mv_counts else []
    aliases = [{"name": m["name"], "alias": a, "version": m["version"], "model_version_id": m["id"]}
               for m in mvs for a in m["aliases"]]
    return {"snapshots": snaps, "model_versions": mvs, "aliases": aliases,
            "plan": {"members": members, "mv_snapshot": mv_snapshot}}


# ---------------------------------------------------------------------------------------------------------
# Workspaces: a request's selector may match several workspaces' examples (its caller curates in each), so
# its audit events and its report are split by workspace: each event names one, and says only what the
# request did (or would do) there; a viewer who sees some of them is shown only their part.


def empty_section() -> dict[str, Any]:
    return {"datasets": [], "examples": 0, "already_erased": 0, "snapshots": [], "model_versions": [],
            "batches": 0, "batches_run": [], "comments_redacted": dict.fromkeys(REDACTED_TEXT, 0)}


def dataset_workspaces(session: Session, dataset_ids: set[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    if not dataset_ids:
        return {}
    return dict(session.execute(select(Dataset.id, Dataset.workspace_id).where(Dataset.id.in_(list(dataset_ids)))).all())


def empty_scope(session: Session, sel: Selector, actor: Actor) -> list[uuid.UUID]:
    """The workspaces a request that matched nothing is about: where its selector could have matched (the
    caller's curator workspaces, or the one of `dataset_id` among them). An admin's reaches every
    workspace, so it names none (and counts as `default`'s, like other installation-wide events)."""
    from app.core.auth import visible_workspaces

    mine = visible_workspaces(session, ("curator",))
    if sel.dataset_id is not None:
        ws = session.scalar(select(Dataset.workspace_id).where(Dataset.id == sel.dataset_id))
        return [ws] if ws is not None and (mine is None or ws in mine) else []
    return [] if mine is None else sorted(mine)


def workspace_sections(matched: list[tuple[uuid.UUID, uuid.UUID, str]], ws_of: dict[uuid.UUID, uuid.UUID],
                       imp: dict[str, Any], batch_size: int) -> dict[str, dict[str, Any]]:
    """Per workspace the selector matched examples of: its datasets, examples to erase and already erased,
    snapshots, model versions (by their run's snapshot) and batches."""
    out: dict[str, dict[str, Any]] = {}
    for _, ds, status in matched:
        sec = out.setdefault(str(ws_of[ds]), empty_section())
        if status == "erased":
            sec["already_erased"] += 1
        else:
            sec["examples"] += 1
            if str(ds) not in sec["datasets"]:
                sec["datasets"].append(str(ds))
    snap_ws = {s["id"]: str(ws_of.get(uuid.UUID(s["dataset_id"]), "")) for s in imp["snapshots"]}
    for sid, w in snap_ws.items():
        if w in out:
            out[w]["snapshots"].append(sid)
    for mv_id, sid in imp["plan"]["mv_snapshot"].items():
        w = snap_ws.get(str(sid))
        if w in out:
            out[w]["model_versions"].append(str(mv_id))
    for sec in out.values():
        sec["datasets"].sort()
        sec["batches"] = -(-sec["examples"] // batch_size)
    return out


def plan_batches(todo: list[tuple[uuid.UUID, uuid.UUID]], ws_of: dict[uuid.UUID, uuid.UUID],
                 batch_size: int) -> list[tuple[uuid.UUID, list[uuid.UUID]]]:
    """(workspace, example ids) per batch, in id order within a workspace: a batch never mixes workspaces,
    so its audit event names one (a request within one workspace batches exactly as before)."""
    by_ws: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for eid, ds in sorted(todo):
        by_ws[ws_of[ds]].append(eid)
    return [(w, ids[i:i + batch_size]) for w in sorted(by_ws) for ids in [by_ws[w]]
            for i in range(0, len(ids), batch_size)]


def section_payload(sec: dict[str, Any], aliases: list[dict[str, Any]]) -> dict[str, Any]:
    return {"examples": sec["examples"], "already_erased": sec["already_erased"], "datasets": sec["datasets"],
            "snapshots": sec["snapshots"], "model_versions": sec["model_versions"],
            "aliases": [a for a in aliases if a["model_version_id"] in sec["model_versions"]]}


# ---------------------------------------------------------------------------------------------------------
# Execution


def _tombstone(request_id: uuid.UUID, at: str) -> dict[str, Any]:
    return {lineage.TOMBSTONE_KEY: {"request_id": str(request_id), "at": at}}


def redaction_marker(request_id: uuid.UUID) -> str:
    return f"[redacted by erasure request {request_id}]"


# Free text written about an example, per table: (report key, table, how the table names the example).
# Reason codes stay: they come from a fixed list and say nothing about the subject.
REDACTED_TEXT = ("reviews", "pairwise_judgments", "review_suggestions", "revisions")


def _comment_targets(ids: list[uuid.UUID], pg: bool) -> dict[str, tuple[Any, Any]]:
    """Per table of REDACTED_TEXT, (model, the condition naming these examples' rows)."""
    # Pairwise judgments have no index on example_id; their revision_id leads a unique index.
    revs = select(ExampleRevision.id).where(any_of(ExampleRevision.example_id, ids, pg=pg)).scalar_subquery()
    return {
        "reviews": (Review, any_of(Review.example_id, ids, pg=pg)),
        "pairwise_judgments": (PairwiseJudgment, PairwiseJudgment.revision_id.in_(revs)),
        "review_suggestions": (ReviewSuggestion, any_of(ReviewSuggestion.example_id, ids, pg=pg)),
        "revisions": (ExampleRevision, any_of(ExampleRevision.example_id, ids, pg=pg)),
    }


def _redact_comments(session: Session, req_id: uuid.UUID, ids: list[uuid.UUID], pg: bool) -> dict[str, int]:
    marker = redaction_marker(req_id)
    out = {}
    for key, (model, cond) in _comment_targets(ids, pg).items():
        out[key] = session.execute(update(model).where(cond, model.comment.is_not(None), model.comment != marker)
                                   .values(comment=marker).execution_options(synchronize_session=False)).rowcount
    return out


def count_comments(session: Session, ids: list[uuid.UUID]) -> dict[str, int]:
    """What `_redact_comments` would redact for these (not yet erased) examples: a preview's figures."""
    pg = is_pg(session)
    out = dict.fromkeys(REDACTED_TEXT, 0)
    step = 50_000 if pg else SEARCH_BATCH
    for i in range(0, len(ids), step):
        for key, (model, cond) in _comment_targets(ids[i:i + step], pg).items():
            out[key] += session.scalar(select(func.count()).select_from(model).where(cond, model.comment.is_not(None)))
    return out


def _upsert_taints(session: Session, rows: list[dict[str, Any]]) -> None:
    ins = dialect_insert(session, ModelVersionTaint).values(rows)
    session.execute(ins.on_conflict_do_update(
        index_elements=["model_version_id", "erasure_request_id"],
        set_={"examples": ModelVersionTaint.examples + ins.excluded.examples}))


def erase_batch(session: Session, req_id: uuid.UUID, ids: list[uuid.UUID], batch_no: int, actor: Actor,
                 plan: dict[str, Any] | None = None, needle: str | None = None,
                 workspace_id: uuid.UUID | None = None) -> dict:
    """`ids` all of `workspace_id` (`plan_batches` never mixes workspaces), so the batch's audit event
    names the one workspace whose data it erased."""
    now = utcnow()
    pg = is_pg(session)
    tomb = _tombstone(req_id, now.isoformat())
    ln, mv = tr.lineage, tr.model_versions
    counts = session.execute(select(ln.c.model_version_id, func.count()).where(any_of(ln.c.example_id, ids, pg=pg))
                             .group_by(ln.c.model_version_id)).all()
    # What a retrained version will be probed for, taken while the raw text still exists (app/lineage/retest.py).
    retest_probes = 0
    if counts:
        names = list(session.scalars(select(mv.c.name).distinct().where(mv.c.id.in_([c[0] for c in counts]))))
        retest_probes = retest.capture(session, req_id, ids, batch_no, names, needle)
    vault_deleted = session.execute(delete(PiiVaultEntry).where(any_of(PiiVaultEntry.example_id, ids, pg=pg))).rowcount
    # A finding's value token is a keyed hash of the erased value (app/pii/tokens.py): it goes with it.
    session.execute(update(PiiFinding).where(any_of(PiiFinding.example_id, ids, pg=pg)).values(value_token=None, value_words=None)
                    .execution_options(synchronize_session=False))
    # An evaluation example's n-gram hashes fingerprint its text: they go with it.
    session.execute(delete(DedupEvalNgram).where(any_of(DedupEvalNgram.example_id, ids, pg=pg)))
    redacted = _redact_comments(session, req_id, ids, pg)
    revisions = session.execute(update(ExampleRevision).where(any_of(ExampleRevision.example_id, ids, pg=pg))
                                .values(content=tomb).execution_options(synchronize_session=False)).rowcount
    session.execute(update(Example).where(any_of(Example.id, ids, pg=pg))
                    .values(status="erased", stage=None, meta={lineage.TOMBSTONE_KEY: str(req_id)}, updated_at=now)
                    .execution_options(synchronize_session=False))
    tainted: list[str] = []
    if counts:
        mv_ids = [c[0] for c in counts]
        values = {"status": "tainted", "status_reason": f"trained on examples erased by erasure request {req_id}"}
        newly = session.execute(update(mv).where(mv.c.id.in_(mv_ids), mv.c.status != "tainted").values(**values)
                                .returning(mv.c.id, mv.c.name, mv.c.version, mv.c.status)).all()
        for row in newly:
            # One event per version, on the version: its own audit trail says when and why it was tainted.
            audit.record(session, actor=actor.ref, action="model_version.tainted", entity_type="model_version",
                         entity_id=row.id, payload={"name": row.name, "version": row.version,
                                                    "erasure_request_id": str(req_id)})
        _upsert_taints(session, [{"model_version_id": k, "erasure_request_id": req_id, "examples": n,
                                  "created_at": now} for k, n in counts])
        tainted = [str(k) for k in mv_ids]
    if plan is not None:
        snaps = {plan["mv_snapshot"][k] for k, _ in counts if k in plan["mv_snapshot"]}
        snaps.update(sid for eid in ids for sid in plan["members"].get(eid, ()))
        snap_ids = sorted(snaps)
    else:  # a resumed request: the plan went with the process that made it
        snap_ids = list(session.scalars(select(SnapshotMember.snapshot_id).distinct()
                                        .where(any_of(SnapshotMember.example_id, ids, pg=pg))))
    if snap_ids:
        session.execute(update(Snapshot).where(Snapshot.id.in_(snap_ids), Snapshot.contains_erased.is_(False))
                        .values(contains_erased=True).execution_options(synchronize_session=False))
    # The running totals go on the request in this batch's transaction, so a resumed request reports the
    # redactions of the batches a crash left committed.
    report = dict(session.scalar(select(ErasureRequest.report).where(ErasureRequest.id == req_id)) or {})
    so_far = report.get("comments_redacted") or {}
    report["comments_redacted"] = {k: so_far.get(k, 0) + redacted[k] for k in REDACTED_TEXT}
    if workspace_id is not None and "workspaces" in report:  # a request from before the split has none to keep
        sections = {k: dict(v) for k, v in report["workspaces"].items()}
        mine = sections.setdefault(str(workspace_id), empty_section())
        mine["batches_run"] = [*mine.get("batches_run", []), batch_no]
        mine["comments_redacted"] = {k: (mine.get("comments_redacted") or {}).get(k, 0) + redacted[k]
                                     for k in REDACTED_TEXT}
        report["workspaces"] = sections
    session.execute(update(ErasureRequest).where(ErasureRequest.id == req_id)
                    .values(batches_done=batch_no + 1, report=report))
    audit.record(session, actor=actor.ref, action="erasure.batch_executed", entity_type="erasure_request",
                 entity_id=req_id, workspace_id=workspace_id,
                 payload={"batch": batch_no, "examples": [str(i) for i in ids], "revisions": revisions,
                          "vault_entries_deleted": vault_deleted, "snapshots": [str(s) for s in snap_ids],
                          "model_versions_tainted": tainted, "retest_probes_sealed": retest_probes,
                          "comments_redacted": redacted})
    return {"revisions": revisions, "vault": vault_deleted, "comments_redacted": redacted}


def response(req: ErasureRequest, *, replayed: bool = False, session: Session | None = None) -> dict[str, Any]:
    rep = req.report or {}
    return {
        # Per tainted model: was a version retrained without the erased examples probed for the subject's
        # strings, and what came out (app/lineage/retest.py). Read when a session is at hand.
        "retest": retest.view(session, req.id) if session is not None else None,
        "id": str(req.id), "status": req.status, "dry_run": req.dry_run, "reason": req.reason,
        "selector": req.selector, "requested_by": req.requested_by, "created_at": iso(req.created_at),
        "finished_at": iso(req.finished_at), "replayed": replayed,
        "affected": {
            "examples": rep.get("examples", 0),
            "snapshots": rep.get("snapshots", []),
            "model_versions": [{"name": m["name"], "version": m["version"], "id": m["id"], "run_id": m.get("run_id"),
                                "status": "tainted" if req.status == "completed" else m.get("status"),
                                "erased_examples": m.get("erased_examples")}
                               for m in rep.get("model_versions", [])],
            "aliases": rep.get("aliases", []),
        },
        "already_erased": rep.get("already_erased", 0),
        "datasets": rep.get("datasets", {}),
        "example_ids": rep.get("example_ids", []),
        "warnings": rep.get("warnings", []),
        "batches": {"total": rep.get("batches", 0), "done": req.batches_done},
        "timings_s": rep.get("timings_s", {}),
        "comments_redacted": {k: (rep.get("comments_redacted") or {}).get(k, 0) for k in REDACTED_TEXT},
        "error": req.error,
    }


def scoped(session: Session, req: ErasureRequest, out: dict[str, Any], visible: set[str] | None) -> dict[str, Any]:
    """`out` (a `response`) cut to what the caller may see: a request that also touched workspaces the
    caller holds no role in shows only the datasets, examples, snapshots, model versions, aliases, batches
    and redactions of the caller's, and no timings (they are the whole request's)."""
    if visible is None:
        return out
    from app.core.auth import visible_workspaces

    rep = req.report or {}
    sections = rep.get("workspaces") or {}
    mine = {str(w) for w in visible_workspaces(session) or ()}
    datasets_touched = set(rep.get("datasets", {}))
    if (set(sections) <= mine) if sections else (datasets_touched <= visible):
        return out
    kept = {k: v for k, v in sections.items() if k in mine}
    ds = datasets_touched & visible
    snaps = {x for v in kept.values() for x in v["snapshots"]} if sections else \
        {x["id"] for x in rep.get("snapshots", []) if x["dataset_id"] in visible}
    # Requests from before the split name no version's workspace: their versions are withheld.
    mvs = {x for v in kept.values() for x in v["model_versions"]}
    aff = out["affected"]
    aliases = [a for a in aff["aliases"] if a["model_version_id"] in mvs]
    names = {m["name"] for m in aff["model_versions"] if m["id"] in mvs}
    ids = [uuid.UUID(i) for i in out.get("example_ids") or []]
    seen_ids: set[str] = set()
    for i in range(0, len(ids), SEARCH_BATCH):
        seen_ids.update(str(e) for e in session.scalars(select(Example.id).where(
            Example.id.in_(ids[i:i + SEARCH_BATCH]), Example.dataset_id.in_([uuid.UUID(d) for d in ds]))))
    return {
        **out,
        "affected": {"examples": sum(n for d, n in out["datasets"].items() if d in ds),
                     "snapshots": [x for x in aff["snapshots"] if x["id"] in snaps],
                     "model_versions": [m for m in aff["model_versions"] if m["id"] in mvs], "aliases": aliases},
        "already_erased": sum(v["already_erased"] for v in kept.values()),
        "datasets": {d: n for d, n in out["datasets"].items() if d in ds},
        "example_ids": [str(e) for e in ids if str(e) in seen_ids] if out.get("example_ids") is not None else None,
        "warnings": warnings_for(aliases, req.dry_run),
        "batches": {"total": sum(v["batches"] for v in kept.values()),
                    "done": sum(len(v["batches_run"]) for v in kept.values())},
        "timings_s": {},
        "comments_redacted": {k: sum(v["comments_redacted"].get(k, 0) for v in kept.values()) for k in REDACTED_TEXT},
        "retest": None if out.get("retest") is None else {
            **out["retest"], "models": [m for m in out["retest"]["models"] if m["model"] in names],
            # The sealed strings are held per batch: only the caller's batches' count.
            "strings_held": retest.held(session, req.id, [b for v in kept.values() for b in v["batches_run"]])},
    }


def warnings_for(aliases: list[dict[str, Any]], dry_run: bool) -> list[str]:
    verb = "would be" if dry_run else "is now"
    return [f"ALIAS {a['name']}@{a['alias']} points at model version {a['name']} v{a['version']}, which {verb} "
            "TAINTED by this erasure: it was trained on erased data; retrain without it and move the alias"
            for a in aliases]


def get(session: Session, request_id: str) -> dict[str, Any]:
    req = session.get(ErasureRequest, id_or_404(request_id, "erasure_request"))
    visible = visible_dataset_strs(session)
    if req is None or not may_see(session, req, visible):
        raise NotFound(f"erasure request {request_id} not found", details={"erasure_request": request_id})
    return scoped(session, req, response(req, session=session), visible)


def list_page(session: Session, *, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    from app.core.pagination import decode_cursor, encode_cursor

    q = select(ErasureRequest)
    if cursor:
        q = q.where(ErasureRequest.id < decode_cursor(cursor))
    rows = list(session.scalars(q.order_by(ErasureRequest.id.desc()).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    out = []
    visible = visible_dataset_strs(session)
    # Filtered after the page is cut (the datasets are in the report's JSON): a page can come back
    # shorter than `limit` with a next cursor; follow it.
    for r in (r for r in rows[:limit] if may_see(session, r, visible)):
        d = response(r)
        d.pop("example_ids")
        d = scoped(session, r, d, visible)
        out.append(d)
    return out, nxt



