"""A datasheet for a snapshot, after "Datasheets for Datasets" (Gebru et al., 2021).

Only the questions the stored data can answer are answered; every other section says plainly what is
not known instead of disappearing, because an empty section in a datasheet reads as "nothing to say".
Facts are gathered with a few aggregate queries (no per-member Python), then rendered as Markdown
(charts as embedded PNG) or HTML (charts as inline SVG). Token counts are estimates: the API loads no
tokenizer, so tokens ≈ characters / 4, which the sheet says where it uses them.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import DateTime, Select, Uuid, bindparam, select, text
from sqlalchemy.orm import Session

from app.core.sql import is_pg
from app.datasets import service as datasets
from app.dedup import queries as dedup_queries
from app.examples import queries as examples_queries
from app.models.snapshot import Snapshot, SnapshotMember
from app.pii import queries as pii_queries
from app.review import queries as review_queries
from app.snapshots import repository

UNKNOWN = "Not known: Pedigree holds no record of this."


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    charts: list[tuple[str, Any]] = field(default_factory=list)  # (caption, matplotlib Figure)


@dataclass
class Facts:
    title: str
    manifest_sha256: str
    sections: list[Section]


def _q(session: Session, sql: str, **params: Any) -> list[Any]:
    binds = [bindparam(k, type_=Uuid()) for k in params if k in ("sid", "ds")]
    return session.execute(text(sql).bindparams(*binds), params).all()


def _length_sql(session: Session, fmt: str) -> str:
    """Characters of trainable text per member revision `r`, per dialect."""
    pg = is_pg(session)
    if fmt == "chat":
        if pg:
            return "(SELECT COALESCE(sum(length(x->>'content')), 0) FROM jsonb_array_elements(r.content->'messages') x)"
        return ("(SELECT COALESCE(sum(length(json_extract(x.value, '$.content'))), 0) "
                "FROM json_each(r.content, '$.messages') x)")
    fields = {"instruction": ("instruction", "input", "output"), "completion": ("prompt", "completion"),
              "preference": ("prompt", "chosen", "rejected")}[fmt]
    if pg:
        return " + ".join(f"COALESCE(length(r.content->>'{f}'), 0)" for f in fields)
    return " + ".join(f"COALESCE(length(json_extract(r.content, '$.{f}')), 0)" for f in fields)


def _fig(kind: str, labels: list[str], values: list[Any], *, title: str, xlabel: str = "", ylabel: str = "",
         series: dict[str, list[float]] | None = None):
    # The object API, not pyplot: no global state, safe in the API's worker threads.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.add_subplot()
    if kind == "barh":
        y = range(len(labels))
        ax.barh(list(y), values, color="#3b6ea5")
        ax.set_yticks(list(y), labels=[lbl[:40] for lbl in labels])
        ax.invert_yaxis()
    else:
        for i, (name, vals) in enumerate((series or {}).items()):
            ax.bar([j + i * 0.4 for j in range(len(labels))], vals, width=0.4, label=name,
                   color=["#3b6ea5", "#e07b39"][i % 2])
        ax.set_xticks([j + 0.2 for j in range(len(labels))], labels=labels, rotation=45, ha="right", fontsize=8)
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def _table_rows(d: dict[str, int], total: int) -> list[list[Any]]:
    return [[k, v, f"{100 * v / total:.1f}%" if total else "-"] for k, v in d.items()]


def gather(session: Session, snap: Snapshot) -> Facts:
    ds = datasets.get(session, snap.dataset_id)
    erased = repository.erased_members(session, snap)
    sections = [_motivation(snap, ds), _composition(snap, erased), _collection(session, snap),
                _preprocessing(session, snap, ds), _bias(session, snap), _distribution(session, snap),
                _maintenance(session, snap, ds, erased)]
    return Facts(title=f"Datasheet: {ds.name} / {snap.name}", manifest_sha256=snap.manifest_sha256,
                 sections=sections)


def _motivation(snap: Snapshot, ds: Any) -> Section:
    mot = Section("Motivation")
    mot.paragraphs.append(f"Snapshot **{snap.name}** of dataset **{ds.name}** ({ds.format} format), frozen by "
                          f"{snap.created_by} on {snap.created_at:%Y-%m-%d %H:%M} UTC.")
    mot.paragraphs.append(f"Dataset description: {ds.description}" if ds.description else
                          "Purpose and funding: not known — the dataset has no description. " + UNKNOWN)
    return mot


def _composition(snap: Snapshot, erased: list[Any]) -> Section:
    st = snap.stats or {}
    n = snap.member_count
    comp = Section("Composition")
    comp.paragraphs.append(
        f"{n:,} examples (one immutable revision each): {snap.counts.get('train', 0):,} train, "
        f"{snap.counts.get('validation', 0):,} validation (fraction {snap.validation_fraction}, seed "
        f"{snap.seed!r}{', stratified by tag ' + repr(snap.stratify_by) if snap.stratify_by else ''}). "
        f"Task format: {snap.format}.")
    comp.tables.append(("Members by source", ["source", "examples", "share"], _table_rows(st.get("sources", {}), n)))
    comp.tables.append(("Members by license", ["license", "examples", "share"],
                        _table_rows(st.get("licenses", {}), n)))
    comp.tables.append(("Members by legal basis", ["legal basis", "examples", "share"],
                        _table_rows(st.get("legal_bases", {}), n)))
    excl = {k: v for k, v in (snap.counts.get("excluded") or {}).items() if v}
    comp.tables.append(("Examples of the dataset left out, by rule", ["rule", "examples"],
                        [[k, v] for k, v in excl.items()] or [["(none)", 0]]))
    shown = {k: v for k, v in (snap.filter or {}).items() if v not in (None, False)}
    comp.paragraphs.append(f"Filter: `{json.dumps(shown, sort_keys=True)}` (anything not named here: defaults).")
    if len(st.get("sources", {})) > 1:
        srcs = st["sources"]
        comp.charts.append(("Members by source", _fig("barh", list(srcs), list(srcs.values()),
                                                      title="Members by source", xlabel="examples")))
    if erased:
        comp.paragraphs.append(f"**{len(erased)} member(s) were erased after the freeze** (right to erasure); "
                               "exports omit them. The manifest hash of the original freeze stays on record.")
    return comp


def _collection(session: Session, snap: Snapshot) -> Section:
    st = snap.stats or {}
    col = Section("Collection process")
    ca = st.get("collected_at") or {}
    col.paragraphs.append(f"Collected between {ca.get('min') or 'unknown'} and {ca.get('max') or 'unknown'} "
                          "(provenance `collected_at`; members without it are not counted in the range)."
                          if ca.get("min") else "Collection dates: " + UNKNOWN)
    batches = examples_queries.ingest_batches_of(session, repository.member_ids(snap.id))
    if batches:
        col.paragraphs.append(f"Ingested in {len(batches)} batch(es).")
        col.tables.append(("Ingest batches (largest 20)", ["batch", "channel", "by", "at", "members"],
                           [[str(b[0])[:8], b[1], b[2], str(b[3])[:19], b[4]] for b in batches[:20]]))
    else:
        col.paragraphs.append("Ingest batches: " + UNKNOWN)
    col.paragraphs.append("How the data were originally produced (by whom, with what instructions or payment) is "
                          "outside Pedigree's records: " + UNKNOWN)
    return col


def _preprocessing(session: Session, snap: Snapshot, ds: Any) -> Section:
    pre = Section("Preprocessing, cleaning and labeling")
    members = repository.member_ids(snap.id)
    _pii_mode(session, snap, members, pre)
    rows = pii_queries.findings_by_type_and_operator(session, members)
    if rows:
        pre.tables.append(("PII findings in members, by entity type and operator",
                           ["entity type", "operator", "findings", "reviewer: false positive"],
                           [list(r) for r in rows]))
    else:
        pre.paragraphs.append("PII: no findings recorded for these members (either none were found or the "
                              "examples were not scrubbed).")
    dups = dedup_queries.duplicates_by_method(session, ds.id, outside=members)
    pre.tables.append(("Duplicates left out, by detection method", ["method", "examples"],
                       [list(r) for r in dups] or [["(none linked)", 0]]))
    _labeling(session, snap, pre)
    return pre


def _labeling(session: Session, snap: Snapshot, pre: Section) -> None:
    revisions = select(SnapshotMember.revision_id).where(SnapshotMember.snapshot_id == snap.id)
    revs = review_queries.decisions_by_reviewer(session, revisions)
    if not revs:
        pre.paragraphs.append("Labeling: no review of these revisions is recorded (selected by status only).")
        return
    by: dict[str, dict[str, int]] = {}
    for who, decision, cnt in revs:
        by.setdefault(who, {})[decision] = cnt
    pre.tables.append(("Reviews of the frozen revisions", ["reviewer", "approve", "reject", "request_changes"],
                       [[w, d.get("approve", 0), d.get("reject", 0), d.get("request_changes", 0)]
                        for w, d in by.items()]))
    multi, same = review_queries.agreement(session, revisions)
    pre.paragraphs.append(
        f"Agreement: {same} of {multi} revisions reviewed more than once got the same decision "
        f"from every reviewer ({100 * same / multi:.1f}% raw agreement)." if multi else
        "Agreement: no revision in this snapshot was reviewed by more than one reviewer.")


def _bias(session: Session, snap: Snapshot) -> Section:
    from app.snapshots import bias

    rep = bias.compute(session, snap)
    sec = Section("Bias examination")
    sec.paragraphs.append(
        f"Demographic descriptors counted in {rep['members_examined']:,} members"
        + (f" ({rep['erased_excluded']} erased members left out)" if rep["erased_excluded"] else "")
        + f"; lexicons version `{rep['lexicons']['version']}`. The full report, with co-occurrence (PMI) "
        f"with occupations and sentiment, per source and license: `GET /v1/snapshots/{snap.id}/bias-report`.")
    sec.paragraphs.append("Method: " + rep["method"])
    for dim, d in rep["dimensions"].items():
        title = dim.replace("_", " ").capitalize()
        groups = sorted(((g, v) for g, v in d["groups"].items() if v["mentions"]), key=lambda kv: -kv[1]["mentions"])
        if not groups:
            sec.paragraphs.append(f"{title}: no mentions.")
            continue

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x:.1%}"

        sec.tables.append((f"{title}: mentions by group",
                           ["group", "mentions", "share", "prompt", "answer", "train share", "validation share"],
                           [[g, v["mentions"], pct(v["share"]), v["by_role"]["prompt"], v["by_role"]["answer"],
                             pct(v["share_by_split"]["train"]), pct(v["share_by_split"]["validation"])]
                            for g, v in groups]))
        if len(groups) > 1:
            top = groups[:12]
            sec.charts.append((f"{title}: mentions by group",
                               _fig("barh", [g for g, _ in top], [v["mentions"] for _, v in top],
                                    title=f"{dim.replace('_', ' ')}: mentions", xlabel="mentions")))
    th = rep["thresholds"]
    if rep["flags"]:
        sec.tables.append(((f"Flags (share difference over {th['share_difference']:.0%}, at least "
                           f"{th['min_mentions']:g} mentions each side)"),
                           ["kind", "dimension", "group", "where", "difference"],
                           [[f["kind"], f["dimension"], f["group"], f.get("source", "train vs validation"),
                             f"{f['difference']:+.1%}"] for f in rep["flags"]]))
    else:
        sec.paragraphs.append(f"Flags: none (no share differs by more than {th['share_difference']:.0%} between "
                              "splits or between a source and the rest).")
    sec.paragraphs.append("Limits: " + " ".join(rep["limits"]))
    return sec


def _distribution(session: Session, snap: Snapshot) -> Section:
    dist = Section("Distribution")
    length = _length_sql(session, snap.format)
    rows = _q(session, f"SELECT m.split, ({length} + 3) / 4 AS tok, count(*) FROM snapshot_members m "
                       f"JOIN example_revisions r ON r.id = m.revision_id WHERE m.snapshot_id = :sid "
                       f"GROUP BY m.split, ({length} + 3) / 4", sid=snap.id)
    if rows:
        edges = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 10**12]
        labels = [f"{edges[i]}–{edges[i + 1] - 1}" for i in range(len(edges) - 2)] + [f"≥{edges[-2]}"]
        hist = {"train": [0] * len(labels), "validation": [0] * len(labels)}
        total_tok = 0
        for split, tok, cnt in rows:
            tok = int(tok or 0)
            total_tok += tok * cnt
            for i in range(len(labels)):
                if edges[i] <= tok < edges[i + 1]:
                    hist.setdefault(split, [0] * len(labels))[i] += cnt
                    break
        dist.paragraphs.append(f"About {total_tok:,} tokens in all (estimate: characters ÷ 4; exact counts depend "
                               "on the base model's tokenizer).")
        keep = [i for i in range(len(labels)) if hist["train"][i] or hist["validation"][i]]
        lo, hi = (keep[0], keep[-1] + 1) if keep else (0, len(labels))
        dist.tables.append(("Length in estimated tokens", ["tokens", "train", "validation"],
                            [[labels[i], hist["train"][i], hist["validation"][i]] for i in range(lo, hi)]))
        dist.charts.append(("Length histogram (estimated tokens)",
                            _fig("bar", labels[lo:hi], [], title="Example length (≈ tokens)", xlabel="tokens",
                                 ylabel="examples", series={k: v[lo:hi] for k, v in hist.items()})))
    dist.paragraphs.append(
        f"Manifest sha256 `{snap.manifest_sha256}` over the sorted lines \"<content_sha256> <split>\". Exports: "
        f"`GET /v1/snapshots/{snap.id}/export?format=pedigree|openai-chat|alpaca|completion|parquet`, each with "
        "the hash in `X-Manifest-SHA256`; `manifest.json` beside them.")
    # The root lets one member's inclusion be proven without the whole member list (an auditor asking
    # about one data subject); large PostgreSQL freezes store it a few seconds after the freeze.
    dist.paragraphs.append(
        f"Merkle root (RFC 6962, same sorted lines) `{snap.merkle_root}`; a membership proof for one example: "
        f"`GET /v1/snapshots/{snap.id}/proof?example_id=...`." if snap.merkle_root else
        "Merkle root: not stored yet (large freezes store it just after the freeze; "
        f"`GET /v1/snapshots/{snap.id}` shows it).")
    dist.paragraphs.append("Terms of use: see the licenses above; any other restriction: " + UNKNOWN)
    return dist


AGE_BUCKETS = ((30, "under 30 days"), (90, "30-89 days"), (365, "90-364 days"))


def _validation_age(session: Session, snap: Snapshot, ds: Any, main: Section) -> None:
    """How long ago each member's example was last validated (the pipeline last finished on it), in
    buckets counted by the database, and what the dataset's revalidation policy says about it."""
    from app.datasets.policies import GovernancePolicy
    from app.models.base import utcnow

    now = utcnow()
    cases = " ".join(f"WHEN e.last_validated_at >= :t{i} THEN {i}" for i in range(len(AGE_BUCKETS)))
    params: dict[str, Any] = {"sid": snap.id}
    binds = [bindparam("sid", type_=Uuid())]
    for i, (days, _) in enumerate(AGE_BUCKETS):
        t = now - dt.timedelta(days=days)
        params[f"t{i}"] = t if is_pg(session) else t.replace(tzinfo=None)
        binds.append(bindparam(f"t{i}", type_=DateTime(timezone=True)))
    rows = session.execute(text(
        f"SELECT CASE WHEN e.last_validated_at IS NULL THEN -1 {cases} ELSE {len(AGE_BUCKETS)} END AS b, count(*) "
        "FROM snapshot_members m JOIN examples e ON e.id = m.example_id WHERE m.snapshot_id = :sid GROUP BY 1"
    ).bindparams(*binds), params).all()
    got = {int(b): n for b, n in rows}
    labels = [label for _, label in AGE_BUCKETS] + ["365 days or more"]
    table = [[label, got.get(i, 0)] for i, label in enumerate(labels)] + [["never validated", got.get(-1, 0)]]
    caption = "Validation age of the members' examples now (since the pipeline last finished on them)"
    main.tables.append((caption, ["age", "members"], table))
    # What validated them: one row per (engine, model, recognizer set) among the members' records.
    by = session.execute(text(
        "SELECT v.pii_engine, v.spacy_model, v.recognizers, count(*) FROM snapshot_members m "
        "JOIN example_validations v ON v.example_id = m.example_id WHERE m.snapshot_id = :sid "
        "GROUP BY v.pii_engine, v.spacy_model, v.recognizers ORDER BY count(*) DESC"
    ).bindparams(bindparam("sid", type_=Uuid())), {"sid": snap.id}).all()
    if by:
        main.tables.append(("What last validated the members' examples (their validation records, now)",
                            ["PII engine", "spaCy model", "recognizer set", "members"],
                            [[e or "none", m or "none", (r or "not recorded")[:12], n] for e, m, r, n in by]))
    days = GovernancePolicy.effective(ds.governance_policy).revalidate_after_days
    main.paragraphs.append(f"Revalidation policy: examples older than {days} days are stale and left out of new "
                           "snapshots (rule `stale`)." if days else
                           "Revalidation policy: none (`governance_policy.revalidate_after_days` is not set).")


def _maintenance(session: Session, snap: Snapshot, ds: Any, erased: list[Any]) -> Section:
    main = Section("Maintenance")
    _validation_age(session, snap, ds, main)
    main.paragraphs.append("The snapshot is immutable: no member can be added or swapped. A member can only be "
                           "erased (right to erasure), after which exports omit it and say so in manifest.json.")
    main.paragraphs.append(f"Currently erased members: {len(erased)}.")
    main.paragraphs.append("Uses the data are or are not suited for, and who maintains it: " + UNKNOWN)
    return main


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


PATTERN_ONLY = "pattern-only"


def _pii_mode(session: Session, snap: Snapshot, members: Select, pre: Section) -> None:
    """Which PII engine and model scrubbed the members, and a warning first when any ran pattern-only.

    Pattern-only mode (PEDIGREE_PII_MODE=pattern_only) is the operator's explicit choice to scrub without a
    NER model; names and places are then found only through cues and the name gazetteer, so a reader of the
    datasheet must see it before trusting the data to be free of personal names. Scrubs and findings both
    record the model; either one saying pattern-only counts.
    """
    models = pii_queries.scrub_models(session, members)
    pattern_only = pii_queries.count_handled_by_model(session, members, PATTERN_ONLY)
    if pattern_only:
        pre.paragraphs.append(
            f"**Warning: PII scrubbing ran in pattern-only mode for {pattern_only} of {snap.member_count} "
            "member(s).** No NER model was used for them (`PEDIGREE_PII_MODE=pattern_only`): names and places "
            "were found only through cues and the name gazetteer, and personal names may remain in the text "
            "(PERSON recall 0.75 instead of 0.91 on the evaluation set, docs/pii.md).")
    if models:
        pre.tables.append(("PII scrubbing engine model, by members scrubbed", ["model", "members"],
                           [list(r) for r in models]))


def render_markdown(f: Facts) -> str:
    out = [f"# {f.title}", "", f"Manifest sha256: `{f.manifest_sha256}`", ""]
    for s in f.sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for caption, head, rows in s.tables:
            out += [f"**{caption}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("")
        for caption, fig in s.charts:
            out += [f"![{caption}](data:image/png;base64,{_png(fig)})", ""]
    return "\n".join(out)


def _inline_md(p: str) -> str:
    # Paragraphs carry **bold** and `code` only; everything else (names, filters) is escaped data.
    import re

    s = html.escape(p)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(f: Facts) -> str:
    css = ("body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
           "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.2rem .6rem;"
           "text-align:left}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2rem;word-break:break-all}"
           "figure{margin:1rem 0}figcaption,caption{color:#555;font-size:13px;text-align:left}")
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(f.title)}</title>"
            f"<style>{css}</style></head><body><h1>{html.escape(f.title)}</h1>")
    out = [head, f"<p>Manifest sha256: <code>{f.manifest_sha256}</code></p>"]
    for s in f.sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{_inline_md(p)}</p>" for p in s.paragraphs]
        for caption, head, rows in s.tables:
            out.append(f"<table><caption>{html.escape(caption)}</caption><tr>"
                       + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        for caption, fig in s.charts:
            out.append(f"<figure>{_svg(fig)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
