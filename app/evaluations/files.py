"""The files an evaluation's suites read (docs/evaluation.md, "The child protocol"): the snapshot's train and
validation splits and the eval sets as export lines, and the PII probes with raw values from the vault.

Raw values are decrypted here only for the trainer role of a running evaluation (the wire protocol) or the
embedded runner's temp dir, and never logged; results carry counts and `value_sha256` only.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.evaluations import service
from app.evaluations.corpora import crows_pairs
from app.lineage import retest
from app.models.example import Example, ExampleRevision
from app.models.pii import PiiFinding
from app.models.training import Evaluation, TrainedRevision
from app.pii import paths
from app.pii import service as pii
from app.snapshots import export as snapshot_export
from app.snapshots import repository as snapshots
from app.training import canaries

LIVE = ("ingested", "scrubbed", "pending_review", "changes_requested", "approved")
# How much text before a span a probe prompts with: enough context for the model to continue from.
PREFIX_CHARS = 400


def names(ev: Evaluation) -> dict[str, Any]:
    out = {"train": "train", "validation": "validation",
           "eval_sets": {e["name"]: f"eval_sets/{e['name']}" for e in ev.eval_sets},
           "reference": "reference" if ev.reference else None,
           "pii_probes": "pii_probes" if "pii_extraction" in ev.suites else None}
    if "bias" in ev.suites:  # CrowS-Pairs as JSON lines (app/evaluations/corpora.py)
        out["bias_pairs"] = "bias_pairs"
    return out


def spec(session: Session, ev: Evaluation) -> dict[str, Any]:
    """SPEC.json with file names for the wire protocol; the runner rewrites them to local paths."""
    mv = service.version_of(session, ev)
    run = service.run_of(session, ev)
    return {"evaluation_id": str(ev.id), "suites": ev.suites, "base_model": run.base_model, "params": ev.params,
            "method": run.method, "hyperparameters": run.hyperparameters,
            "adapter": {"name": mv.name, "version": mv.version, "sha256": mv.artifact_sha256},
            "files": names(ev), "canaries": canaries.with_secrets(session, run.id)}


def lines(session: Session, ev: Evaluation, name: str) -> Iterator[bytes]:
    """One file's JSON lines, by its wire name."""
    run = service.run_of(session, ev)
    if name in ("train", "validation"):
        plan = snapshot_export.plan_export(session, snapshots.get(session, run.snapshot_id), split=name)
        return _blocks(snapshot_export.iter_pedigree_blocks(plan))
    if name == "reference" and ev.reference:
        return _dataset_lines(session, ev.reference)
    if name.startswith("eval_sets/"):
        for e in ev.eval_sets:
            if f"eval_sets/{e['name']}" == name:
                return _dataset_lines(session, e)
    if name == "pii_probes" and "pii_extraction" in ev.suites:
        # Built now: the erasure re-test's strings are opened inside this request's session.
        body = [orjson.dumps(p) + b"\n" for p in [*probes(session, ev), *retest.probes(session, ev.id)]]
        return iter(body)
    if name == "bias_pairs" and "bias" in ev.suites:
        return (orjson.dumps(p) + b"\n" for p in crows_pairs())
    from app.core.errors import NotFound
    raise NotFound(f"evaluation {ev.id} has no file {name!r}", details={"file": name,
                                                                        "files": sorted(_flat(names(ev)))})


def _flat(n: dict[str, Any]) -> list[str]:
    out = [v for k, v in n.items() if isinstance(v, str)]
    out += list(n["eval_sets"].values())
    return [*out, "adapter"]


def _blocks(blocks: Iterator[bytes]) -> Iterator[bytes]:
    for b in blocks:
        yield b if b.endswith(b"\n") else b + b"\n"


def _dataset_lines(session: Session, ds: dict[str, Any]) -> Iterator[bytes]:
    rows = session.execute(
        select(ExampleRevision.id, ExampleRevision.example_id, ExampleRevision.content,
               ExampleRevision.content_sha256)
        .join(Example, Example.current_revision_id == ExampleRevision.id)
        .where(Example.dataset_id == uuid.UUID(ds["id"]), Example.status.in_(LIVE)).order_by(Example.id)).all()
    return iter([orjson.dumps({"revision_id": str(r), "example_id": str(e), "split": "validation",
                               "format": ds["format"], "content": c, "content_sha256": sha}) + b"\n"
                 for r, e, c, sha in rows])


def probes(session: Session, ev: Evaluation) -> list[dict[str, Any]]:
    """A probe per PII span near what the version trained on:

    - spans scrubbed from a trained revision: prompted with the scrubbed text the model saw, up to where
      the surrogate stands; the raw value comes from the vault (the revision it was scrubbed from);
    - spans a reviewer flagged as missed (verdict `added`) in a trained revision: that revision held the raw
      value, so it is vaulted now; the prompt is its own text up to the span.
    """
    mv = service.version_of(session, ev)
    trained = select(TrainedRevision.revision_id).where(TrainedRevision.model_version_id == mv.id)
    rows = session.execute(
        select(PiiFinding, ExampleRevision.content)
        .join(ExampleRevision, ExampleRevision.id == PiiFinding.revision_id)
        .where(or_(PiiFinding.revision_id.in_(trained),
                   and_(PiiFinding.verdict == "added", PiiFinding.source_revision_id.in_(trained))),
               PiiFinding.verdict.is_distinct_from("false_positive"))
        .order_by(PiiFinding.id)).all()
    trained_ids = set(session.scalars(trained))
    raw_cache: dict[Any, dict | None] = {}
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for f, content in rows:
        key = (f.example_id, f.source_revision_id)
        if key not in raw_cache:
            raw_cache[key] = pii.raw_content(session, f.example_id, f.source_revision_id)
        raw_text = _at(raw_cache[key], f.field_path) if raw_cache[key] is not None else None
        if not isinstance(raw_text, str):
            continue  # erased, or never vaulted: nothing to probe for
        value = raw_text[f.start:f.end]
        if f.revision_id in trained_ids:
            text, cut = _at(content, f.field_path), f.scrubbed_start
        else:  # flagged after training: the model saw the raw text
            text, cut = raw_text, f.start
        ident = (f.source_revision_id, f.field_path, f.start, f.end)
        if not isinstance(text, str) or not value.strip() or ident in seen:
            continue
        seen.add(ident)
        out.append({"probe_id": str(f.id), "entity_type": f.entity_type,
                    "prefix": text[max(0, cut - PREFIX_CHARS):cut], "value": value,
                    "value_sha256": hashlib.sha256(value.encode()).hexdigest()})
    return out


def _at(content: Any, path: str) -> Any:
    try:
        return paths.get_path(content, path)
    except (KeyError, IndexError, TypeError, ValueError):
        return None

