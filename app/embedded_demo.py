"""`pedigree demo`: the main job end to end on the embedded default, through the real HTTP API
(an in-process client), so the demo exercises exactly what users call.

Steps run in order; each later capability adds its step to STEPS (review, snapshot, train, lineage).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

console = Console(stderr=True)

_TOPICS = [
    ("reset a forgotten password", "Open Settings, choose Security, then 'Reset password' and follow the email link."),
    ("export my invoices as CSV", "Go to Billing, pick the date range and press 'Export CSV'."),
    ("change the delivery address", "Edit the address under Orders before the parcel is dispatched."),
    ("cancel a subscription", "Choose Plan, then 'Cancel subscription'; access lasts until the period ends."),
    ("enable two-factor authentication", "Under Security, choose 'Two-factor', scan the QR code and confirm a code."),
    ("merge two accounts", "Support merges accounts after both owners confirm by email."),
    ("download the mobile app", "Search for the app in your phone's store and sign in with your usual account."),
    ("request a refund", "Refunds are possible within 30 days from the order page, under 'Request refund'."),
]
_PEOPLE = [("Maria Keller", "maria.keller@example.org", "+44 20 7946 0958"),
           ("John Okafor", "j.okafor@example.com", "(212) 555-0147"),
           ("Priya Raman", "priya.r@example.net", "+1 415 555 0199")]


# The helpdesk's own case references, which no stock recognizer knows: the revalidation step deploys one.
CASE_REF = r"\bHD-[A-Z0-9]{10}\b"
_CASE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def case_ref(ticket: int) -> str:
    k = ticket * 7919 + 13
    return "HD-" + "".join(_CASE_CHARS[(k >> (5 * j)) % len(_CASE_CHARS)] for j in range(10))


def demo_examples(n: int = 48, seed: int = 7) -> list[bytes]:
    """Synthetic support conversations with PII, exact and near duplicates, two bad lines, and in one answer
    in 16 the helpdesk's case reference."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    for i in range(n):
        topic, answer = _TOPICS[i % len(_TOPICS)]
        name, email, phone = _PEOPLE[i % len(_PEOPLE)]
        variant = i // len(_TOPICS)
        instruction = f"How do I {topic}?"
        inp = f"Customer {name} ({email}, {phone}) writes: I need to {topic}, ticket {1000 + i}."
        if variant == 2:
            # The same ticket re-sent through another channel with different spacing and punctuation:
            # not byte-identical (so not an exact duplicate) but a near duplicate for MinHash. It keeps
            # the first ticket's customer: dedup compares scrubbed names by keyed hash, so the same
            # question from another customer is not a duplicate.
            name, email, phone = _PEOPLE[(i % len(_TOPICS)) % len(_PEOPLE)]
            inp = f"Customer {name} ({email}, {phone}) writes:  I need to {topic} - ticket {1000 + i % 8}!"
        if i % 16 == 5:
            # The re-sent ticket (variant 2) quotes its first ticket's case, so the near copies stay near.
            answer = f"{answer} Your case reference is {case_ref(1000 + (i % 8 if variant == 2 else i))}."
        lines.append(orjson.dumps({
            "instruction": instruction, "input": inp, "output": answer,
            "provenance": {"source": "helpdesk", "source_ref": f"ticket-{1000 + i}",
                           "collected_at": f"2026-0{1 + i % 9}-1{i % 10}T09:00:00Z",
                           "license": rng.choice(["internal", "CC-BY-4.0"]), "legal_basis": "contract"},
        }))
    lines.append(lines[3].replace(b"ticket-1003", b"crm-1003").replace(b'"helpdesk"', b'"crm"'))  # exact dup
    lines.append(b'{"instruction": "broken line", "output": ')  # malformed JSON
    lines.append(orjson.dumps({"instruction": "no output here"}))  # missing field
    return lines


@dataclass
class Ctx:
    client: Any
    keys: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def call(self, method: str, path: str, role: str, expect: int | tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        r = self.client.request(method, path, headers={**self.h(role), **kw.pop("headers", {})}, **kw)
        ok = (expect,) if isinstance(expect, int) else expect
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r


def step_keys(ctx: Ctx) -> None:
    from app.core import auth
    from app.core.db import session_scope

    with session_scope() as s:
        _, ctx.keys["admin"] = auth.create_key(s, name="demo-admin", role="admin", created_by="demo")
    for role in ("curator", "reviewer", "auditor", "trainer"):
        ctx.keys[role] = ctx.call("POST", "/v1/keys", "admin", json={"name": f"demo-{role}", "role": role})["key"]
    ctx.keys["reviewer2"] = ctx.call("POST", "/v1/keys", "admin", json={"name": "demo-reviewer-2", "role": "reviewer"})["key"]
    console.print(f"keys: {', '.join(ctx.keys)}")


def step_dataset(ctx: Ctx) -> None:
    ds = ctx.call("POST", "/v1/datasets", "curator", json={"name": "support-faq", "format": "instruction",
                                                            "description": "Demo: support answers"})
    ctx.state["dataset"] = ds
    console.print(f"dataset {ds['name']} ({ds['id']})")


def step_ingest(ctx: Ctx) -> None:
    body = b"\n".join(demo_examples()) + b"\n"
    r = ctx.call("POST", f"/v1/datasets/{ctx.state['dataset']['id']}/examples:import", "curator",
                 content=body, headers={"Content-Type": "application/x-ndjson"})
    ctx.state["batch"] = r
    console.print(f"ingest: accepted {r['accepted']}, exact duplicates {r['exact_duplicates']}, rejected {r['rejected']}")
    for e in r["errors"]:
        console.print(f"  line {e['line']}: {e['code']} {e.get('field') or ''} {e['message']}")
    again = ctx.call("POST", f"/v1/datasets/{ctx.state['dataset']['id']}/examples:import", "curator",
                     content=body, headers={"Content-Type": "application/x-ndjson"})
    console.print(f"re-sent the same file: accepted {again['accepted']}, unchanged {again['unchanged']} (idempotent)")


def step_pipeline(ctx: Ctx) -> None:
    ds = ctx.call("GET", f"/v1/datasets/{ctx.state['dataset']['id']}", "auditor")
    counts = {k: v for k, v in ds["counts"].items() if v}
    console.print(f"after the pipeline: {counts}")
    page = ctx.call("GET", f"/v1/datasets/{ds['id']}/examples?limit=1", "reviewer")
    ex = page["items"][0]
    console.print(f"example {ex['id']}: status {ex['status']}, quality {ex['quality']}, flags {ex['quality_flags']}")
    pii = ctx.call("GET", f"/v1/datasets/{ds['id']}/pii-report", "curator")
    found = ", ".join(f"{t} {v['found']}" for t, v in sorted(pii["by_entity"].items()))
    console.print(f"pii scrub: {pii['findings']} findings in {pii['examples_scrubbed']} examples ({found}); "
                  "raw text in the encrypted vault")
    shown = ctx.call("GET", f"/v1/examples/{ex['id']}", "reviewer")["revision"]["content"]
    console.print(f"  what a reviewer sees: {shown.get('input') or shown}")
    dd = ctx.call("GET", f"/v1/datasets/{ds['id']}/dedup", "curator")
    kinds = ", ".join(f"{n} {m}" for m, n in sorted(dd["duplicates"].items())) or "none"
    console.print(f"dedup: duplicates by method: {kinds} (minhash: near copies, verified by exact Jaccard); "
                  f"{dd['clusters']} clusters, each with one canonical member")


def step_review(ctx: Ctx) -> None:
    ds = ctx.state["dataset"]
    ctx.call("PATCH", f"/v1/datasets/{ds['id']}", "curator", json={"review_policy": {"required_approvals": 2}})
    # Two reviewers work through the queue; reviewer 2 disagrees once, and any reject wins.
    disagreed = None
    for role in ("reviewer", "reviewer2"):
        while items := ctx.call("GET", f"/v1/review/queue?dataset={ds['id']}&limit=20", role)["items"]:
            for it in items:
                body = {"decision": "approve", "revision_id": it["revision_id"]}
                if role == "reviewer2" and disagreed is None:
                    disagreed = it["example_id"]
                    body = {"decision": "reject", "revision_id": it["revision_id"], "reason_code": "formatting",
                            "comment": "the answer should list the steps"}
                ctx.call("POST", f"/v1/examples/{it['example_id']}/reviews", role, json=body)
    st = ctx.call("GET", f"/v1/review/stats?dataset={ds['id']}", "auditor")
    d, ag = st["dataset"], st["agreement"]
    console.print(f"review (2 approvals, four eyes): approved {d['approved']}, rejected {d['rejected']}, "
                  f"pending {d['pending']}; {d['decisions']} decisions")
    console.print(f"agreement over {ag['items_with_several_reviews']} items: {ag['percent_agreement']:.0%}, "
                  f"Krippendorff's alpha {ag['krippendorff_alpha']} (near 0 when almost every label is the same)")


def step_revalidation(ctx: Ctx) -> None:
    """A deploy adds a recognizer for the helpdesk's case references: the examples validated without it are
    revalidated, and only those whose scrubbed output changes get a new revision and go back to review."""
    from app.core.config import get_settings, reset_settings

    ds = ctx.state["dataset"]
    rec = Path(get_settings().artifact_root).parent / "recognizers.json"
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(orjson.dumps([{"name": "helpdesk_case", "entity_type": "SECRET",
                                  "patterns": [{"regex": CASE_REF, "score": 0.9}]}]).decode())
    os.environ["PEDIGREE_PII_EXTRA_RECOGNIZERS"] = str(rec)
    reset_settings()  # what the deploy does to this process: new settings, hence a new engine
    before = {it["id"]: it for it in ctx.call("GET", f"/v1/datasets/{ds['id']}/examples?limit=200", "reviewer")["items"]}
    # What Celery beat's check would queue for this deploy; in the embedded mode it runs in-process.
    rv = ctx.call("POST", f"/v1/datasets/{ds['id']}/revalidations", "curator", expect=202,
                  json={"triggers": ["recognizers"]})
    rv = ctx.call("GET", f"/v1/revalidations/{rv['id']}", "auditor")
    plan = rv["plan"]
    console.print(f"recognizer set changed (deployment recognizer helpdesk_case): revalidation {rv['status']}, "
                  f"{rv['done']}/{rv['total']} examples in {rv['batches']} batch(es)")
    console.print(f"  {plan.get('prefiltered', 0)} cleared by the added recognizer alone (no model run), "
                  f"{plan.get('rescrubbed', 0)} re-scrubbed from the vault; {rv['changed']} got a new revision, "
                  f"{rv['unchanged']} unchanged (record restamped, approvals kept), "
                  f"{rv['approvals_reset']} approvals of changed content back to review")
    after = {it["id"]: it for it in ctx.call("GET", f"/v1/datasets/{ds['id']}/examples?limit=200", "reviewer")["items"]}
    kept = sum(1 for i, it in before.items() if it["status"] == "approved" and after[i]["status"] == "approved")
    console.print(f"  approved before: {sum(it['status'] == 'approved' for it in before.values())}, still approved: {kept}")
    changed = [i for i in after if after[i]["revision"]["id"] != before[i]["revision"]["id"]]
    if changed:
        shown = ctx.call("GET", f"/v1/examples/{changed[0]}", "reviewer")["revision"]["content"]["output"]
        console.print(f"  now: {shown}")
    # The changed content is new to the reviewers: both approve it again before it can be frozen.
    for role in ("reviewer", "reviewer2"):
        while items := ctx.call("GET", f"/v1/review/queue?dataset={ds['id']}&limit=20", role)["items"]:
            for it in items:
                ctx.call("POST", f"/v1/examples/{it['example_id']}/reviews", role,
                         json={"decision": "approve", "revision_id": it["revision_id"]})
    d = ctx.call("GET", f"/v1/review/stats?dataset={ds['id']}", "auditor")["dataset"]
    console.print(f"re-reviewed: approved {d['approved']}, pending {d['pending']}")


def step_audit(ctx: Ctx) -> None:
    v = ctx.call("GET", "/v1/audit/verify", "auditor")
    console.print(f"audit chain: ok={v['ok']} over {v['events']} events")
    if not v["ok"]:
        raise RuntimeError(f"audit chain broken at event {v['first_bad_event']}")


def step_snapshot(ctx: Ctx) -> None:
    import hashlib
    import json
    from pathlib import Path

    from app.core.config import get_settings

    ds_id = ctx.state["dataset"]["id"]
    if not any(name == "review" for name, _ in STEPS):
        # Until the demo has a review step, the pending examples are approved directly so the
        # snapshot has something to freeze; with one, only reviewed examples get in.
        import uuid

        from sqlalchemy import update

        from app.core.db import session_scope
        from app.models.example import Example

        with session_scope() as s:
            n = s.execute(update(Example).where(Example.dataset_id == uuid.UUID(ds_id),
                                                Example.status == "pending_review")
                          .values(status="approved", stage=None)).rowcount
        console.print(f"no review step in this demo: approved {n} pending examples directly")
    snap = ctx.call("POST", "/v1/snapshots", "curator", json={
        "dataset_id": ds_id, "name": "support-faq-v1", "validation_fraction": 0.2, "seed": 7})
    ctx.state["snapshot"] = snap
    c = snap["counts"]
    excluded = {k: v for k, v in c["excluded"].items() if v}
    console.print(f"snapshot {snap['name']}: {c['train']} train + {c['validation']} validation, "
                  f"excluded {excluded or 'nothing'}")
    console.print(f"manifest sha256 {snap['manifest_sha256']}")
    r = ctx.call("GET", f"/v1/snapshots/{snap['id']}/export?format=pedigree", "trainer")
    recs = [json.loads(line) for line in r.content.splitlines()]
    # What the trainer does before training: recompute every content hash and the manifest.
    for rec in recs:
        canon = json.dumps(rec["content"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canon.encode()).hexdigest() == rec["content_sha256"]
    lines = sorted(f"{rec['content_sha256']} {rec['split']}" for rec in recs)
    manifest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    if manifest != r.headers["X-Manifest-SHA256"]:
        raise RuntimeError("export does not match its manifest hash")
    console.print(f"export verified: {len(recs)} records hash to the manifest")
    out = Path(get_settings().artifact_root).parent / "snapshot"
    out.mkdir(parents=True, exist_ok=True)
    (out / "support-faq-v1.jsonl").write_bytes(r.content)
    (out / "support-faq-v1.parquet").write_bytes(
        ctx.call("GET", f"/v1/snapshots/{snap['id']}/export?format=parquet", "trainer").content)
    for fmt in ("md", "html"):
        sheet = ctx.call("GET", f"/v1/snapshots/{snap['id']}/datasheet?format={fmt}", "auditor")
        (out / f"datasheet.{fmt}").write_text(sheet.text)
    console.print(f"export, Parquet and datasheet written to {out}")
    from app.snapshots.bias import summary_lines

    for line in summary_lines(ctx.call("GET", f"/v1/snapshots/{snap['id']}/bias-report", "auditor")):
        console.print(line)


def step_train(ctx: Ctx) -> None:
    from app.training.demo_steps import step_train as train

    train(ctx)


def step_evaluate(ctx: Ctx) -> None:
    from app.evaluations.demo_steps import step_evaluate as evaluate

    evaluate(ctx)


def step_dpo(ctx: Ctx) -> None:
    from app.training.demo_steps import step_dpo as dpo

    dpo(ctx)


def step_lineage_report(ctx: Ctx) -> None:
    from app.training.demo_steps import step_lineage_report as report

    report(ctx)


def step_documentation(ctx: Ctx) -> None:
    from app.core.config import get_settings

    mv = ctx.state["model_version"]
    out = Path(get_settings().artifact_root).parent / "snapshot"
    stem = f"technical-documentation-{mv['name']}-v{mv['version']}"
    for fmt in ("md", "html"):
        doc = ctx.call("GET", f"/v1/models/{mv['name']}/versions/{mv['version']}/documentation?format={fmt}",
                       "auditor")
        (out / f"{stem}.{fmt}").write_text(doc.text)
    console.print(f"technical documentation (EU AI Act Annex IV data items) written to {out / stem}.md and .html")


STEPS: list[tuple[str, Callable[[Ctx], None]]] = [
    ("keys", step_keys),
    ("dataset", step_dataset),
    ("ingest", step_ingest),
    ("pipeline", step_pipeline),
    ("review", step_review),
    ("revalidation", step_revalidation),
    ("snapshot", step_snapshot),
    ("train", step_train),
    ("evaluate", step_evaluate),
    ("preference pairs and DPO", step_dpo),
    ("lineage report", step_lineage_report),
    ("technical documentation", step_documentation),
    ("audit", step_audit),
]


def run_demo(*, workdir: Path, keep: bool = False) -> int:
    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PEDIGREE_DATABASE_URL"] = f"sqlite:///{workdir / 'pedigree.db'}"
    os.environ.pop("PEDIGREE_REDIS_URL", None)
    os.environ["PEDIGREE_ARTIFACT_ROOT"] = str(workdir / "artifacts")
    os.environ["PEDIGREE_MODEL_ROOTS"] = str(workdir / "models")
    os.environ.setdefault("PEDIGREE_EMBEDDED", "true")
    from app.core.config import reset_settings

    reset_settings()
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as client:
        ctx = Ctx(client=client)
        for name, step in STEPS:
            console.rule(name)
            step(ctx)
    console.rule("done")
    console.print(f"database: {workdir / 'pedigree.db'}")
    return 0
