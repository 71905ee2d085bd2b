"""Technical documentation of one model version (`GET /v1/models/{name}/versions/{v}/documentation`).

The EU AI Act's Annex IV asks a provider of a high-risk system for technical documentation; its §2 items
on data (§2(d): data requirements, datasheets describing the training data, its provenance, scope and main
characteristics, how it was obtained and selected, labelling and cleaning) and Art. 10's examination for
biases are what Pedigree's records answer. Every figure here is computed from records when asked
(app/snapshots/records.py, the lineage and evaluation read APIs); the document names the snapshot's
manifest sha256 and Merkle root and the audit chain's head it was built from, so an auditor can check
each against `manifest.json`, a membership proof and `GET /v1/audit/verify`. Rendered with the
datasheet's Markdown / HTML writers (a printable page: plain HTML, no script).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.evaluations import service as evaluations
from app.lineage import service as lineage
from app.models.lineage import ModelVersionTaint
from app.models.snapshot import Snapshot
from app.snapshots import datasheet, records
from app.snapshots.datasheet import Facts, Section
from app.training import gates, registry

RETENTION = ("Retention (EU AI Act Art. 18): keep this documentation, and the records it was generated from, for "
             "ten years after the model version is placed on the market or put into service. Pedigree's records "
             "are append-only (audit chain) and snapshots immutable, so the document can be regenerated and "
             "checked against them for as long as they are kept.")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _metrics(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for suite, res in sorted(results.items()):
        for k, v in sorted((res or {}).items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append([f"{suite}.{k}", _fmt(v)])
    return rows


def gather(session: Session, *, name: str, version: int) -> Facts:
    mv = registry.get_version(session, name, version)
    lin = lineage.model_lineage(session, name=name, version=version)
    run, snap_view, summary = lin["run"], lin["snapshot"], lin["summary"]
    snap = session.get(Snapshot, uuid.UUID(snap_view["id"])) if snap_view is not None else None
    head = audit.chain_head(session)
    now = dt.datetime.now(dt.UTC)
    view = lin["model_version"]
    title = f"Technical documentation: {name} v{version}"
    sections: list[Section] = []

    ident = Section("1. Identification and provenance of this document")
    ident.paragraphs.append(
        f"Model **{name}** version **{version}**, status `{view['status']}`, aliases "
        f"{', '.join(view['aliases']) or 'none'}; adapter sha256 `{view['artifact_sha256']}`. Base model "
        f"`{run['base_model'] if run else 'unknown'}`, method {run['method'] if run else 'unknown'}, training run "
        f"`{run['id'] if run else 'unknown'}` (started {run['started_at'] if run else '-'}, finished "
        f"{run['finished_at'] if run else '-'}).")
    ident.paragraphs.append(
        f"Generated {now:%Y-%m-%d %H:%M} UTC from Pedigree's records: snapshot manifest sha256 "
        f"`{snap.manifest_sha256 if snap else 'none'}`, Merkle root `{(snap.merkle_root if snap else None) or 'none'}`, "
        f"audit chain head seq {head['seq']} hash `{head['hash']}`. Check them with "
        f"`GET /v1/snapshots/{{id}}/manifest.json`, a membership proof and `GET /v1/audit/verify`.")
    sections.append(ident)

    rec = records.gather(session, snap) if snap is not None else None
    data = Section("2. Data requirements and training data (Annex IV §2(d), Art. 10)")
    if snap is None or rec is None:
        data.paragraphs.append("No snapshot is recorded for this version's run: its training data are not known.")
    else:
        data.paragraphs.append(
            f"Training data: snapshot **{snap.name}** of dataset **{rec.dataset.name}** ({snap.format} format), "
            f"{snap.member_count:,} examples frozen {snap.created_at:%Y-%m-%d} by {snap.created_by}: "
            f"{snap.counts.get('train', 0):,} train, {snap.counts.get('validation', 0):,} validation. The run "
            f"trained on {summary['examples']:,} examples, {summary['tokens']:,} tokens (lineage rows).")
        data.paragraphs.append(f"Selection: filter `{snap.filter}`; examples of the dataset left out at freeze: "
                               + (", ".join(f"{k} {v:,}" for k, v in rec.excluded.items()) or "none") + ".")
        data.paragraphs.append("Data requirements and intended use: " + records.use_cases_text(rec))
    sections.append(data)

    prov = Section("3. Provenance by source, license and legal basis")
    n = summary["examples"] or 1
    for key, label in (("by_source", "source"), ("by_license", "license"), ("by_legal_basis", "legal basis")):
        prov.tables.append((f"Trained examples by {label}", [label, "examples", "share"],
                            [[k, v, f"{100 * v / n:.1f}%"] for k, v in summary[key].items()] or [["(none)", 0, "-"]]))
    if rec is not None:
        prov.paragraphs.append("Collection: " + records.collection_text(rec))
    sections.append(prov)

    prep = Section("4. Data preparation: scrubbing, deduplication, review")
    if rec is not None:
        prep.paragraphs.append(records.preprocessing_text(rec))
        prep.paragraphs.append(records.sensitive_text(rec))
        prep.paragraphs.append(records.annotation_text(rec))
        if rec.pii_findings:
            prep.tables.append(("PII findings in the snapshot, by entity type and operator",
                                ["entity type", "operator", "findings", "reviewer: false positive"],
                                [[f["entity_type"], f["operator"], f["findings"], f["false_positive"]]
                                 for f in rec.pii_findings]))
    if summary["by_reviewer"]:
        prep.tables.append(("Reviews of the trained revisions, by reviewer", ["reviewer", "decisions"],
                            [[w, ", ".join(f"{d} {c}" for d, c in sorted(ds.items()))]
                             for w, ds in summary["by_reviewer"].items()]))
    sections.append(prep)

    bias = Section("5. Examination for biases (Art. 10(2)(f))")
    if rec is not None:
        bias.paragraphs.append("Training data: " + records.bias_text(rec))
    ev_bias = next((e for e in lin["evaluations"] if e["status"] == "succeeded" and "bias" in e["results"]), None)
    if ev_bias:
        b = ev_bias["results"]["bias"]
        bias.paragraphs.append(
            f"Model (evaluation `{ev_bias['id']}`, CrowS-Pairs, {b.get('pairs')} pairs): stereotype score "
            f"{_fmt(b.get('stereotype_score'))} against the base model's {_fmt(b.get('base_stereotype_score'))} "
            f"(delta {_fmt(b.get('stereotype_score_delta'))}; 0.5 = no preference). {b.get('noise_note', '')}")
        bias.tables.append(("Stereotype score by bias type", ["bias type", "pairs", "adapter", "base", "delta"],
                            [[t, v.get("pairs"), _fmt(v.get("stereotype_score")), _fmt(v.get("base_stereotype_score")),
                              _fmt(v.get("delta"))] for t, v in sorted((b.get("by_type") or {}).items())]))
    else:
        bias.paragraphs.append("Model: no succeeded `bias` evaluation of this version is recorded.")
    sections.append(bias)

    evs = Section("6. Evaluation results and promotion gates")
    done = [e for e in lin["evaluations"] if e["status"] == "succeeded"]
    if done:
        latest = done[0]
        evs.paragraphs.append(f"{len(done)} succeeded evaluation(s); the newest (`{latest['id']}`, finished "
                              f"{latest['finished_at']}) decides the gates.")
        evs.tables.append(("Metrics of the newest succeeded evaluation", ["metric", "value"],
                           _metrics(latest["results"]) or [["(none)", "-"]]))
    else:
        evs.paragraphs.append("No succeeded evaluation is recorded for this version.")
    policy = evaluations.get_policy(session, name)
    if policy["gates"]:
        rows = []
        for alias in policy["gated_aliases"]:
            fails = gates.failures(session, name=name, alias=alias, mv_id=mv.id) or []
            failing = {f["metric"] for f in fails}
            for g in policy["gates"]:
                op, limit = ("≤", g["max"]) if g.get("max") is not None else ("≥", g["min"])
                rows.append([alias, g["metric"], f"{op} {limit}", "fails" if g["metric"] in failing else "passes"])
        evs.tables.append(("Gates of the model's policy", ["alias", "metric", "limit", "this version"], rows))
    else:
        evs.paragraphs.append("The model has no promotion policy (no gates).")
    if lin["gate_overrides"]:
        evs.tables.append(("Promotions that overrode a failing gate", ["alias", "by", "at", "reason"],
                           [[o["alias"], o["actor"], o["at"], o["reason"]] for o in lin["gate_overrides"]]))
    if lin["canaries"]:
        evs.paragraphs.append(f"{len(lin['canaries'])} training canaries were planted (ids and repetitions in the "
                              "lineage; secrets never leave the vault).")
    sections.append(evs)

    lin_sec = Section("7. Lineage and erasures")
    lin_sec.paragraphs.append(
        f"Every trained revision has a lineage row (`GET /v1/lineage/models/{name}/versions/{version}/examples`); "
        f"{summary['examples']:,} examples, {summary['tokens']:,} tokens. By current status: "
        + (", ".join(f"{k} {v:,}" for k, v in summary["by_status"].items()) or "none") + ".")
    taints = session.execute(select(ModelVersionTaint.erasure_request_id, ModelVersionTaint.examples,
                                    ModelVersionTaint.created_at)
                             .where(ModelVersionTaint.model_version_id == mv.id)
                             .order_by(ModelVersionTaint.created_at)).all()
    if taints:
        lin_sec.tables.append(("Erasure requests that touched this version", ["erasure request", "examples", "at"],
                               [[str(t[0]), t[1], str(t[2])[:19]] for t in taints]))
        lin_sec.paragraphs.append(f"**This version is tainted**: it was trained on data erased since "
                                  f"({sum(t[1] for t in taints)} example(s)); retrain without them.")
    else:
        lin_sec.paragraphs.append("No erasure request has touched the examples this version was trained on.")
    for w in lin["warnings"]:
        lin_sec.paragraphs.append(f"**{w}**")
    sections.append(lin_sec)

    gaps = Section("8. Gaps and limitations")
    if rec is not None:
        gaps.paragraphs.append(records.limitations_text(rec))
    gaps.paragraphs.append("Not covered by Pedigree's records: the system the model is part of, its human oversight "
                           "measures, hardware, and post-market monitoring (Annex IV §§1, 3–9).")
    gaps.paragraphs.append(RETENTION)
    sections.append(gaps)
    return Facts(title=title, manifest_sha256=snap.manifest_sha256 if snap else "none", sections=sections)


def render(facts: Facts, fmt: str) -> str:
    return datasheet.render_html(facts) if fmt == "html" else datasheet.render_markdown(facts)
