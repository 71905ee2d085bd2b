"""The `pii` pipeline stage, the raw-text vault, reviewer verdicts and the per-dataset report.

What a reviewer or curator reads is the scrubbed revision; its findings carry types, spans and operators,
never raw values. The raw content of every scrubbed revision is encrypted into `pii_vault` in the same
transaction that creates the scrubbed revision, and the source revision row keeps only a marker and its
hash (so ingest's exact-duplicate check and the audit chain still hold). Only an admin reads it back,
and each read is an audit event.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import uuid
from collections import defaultdict
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from app.access import grants
from app.audit import service as audit
from app.core import metrics
from app.core.auth import RAW_PII_READERS, Actor
from app.core.config import get_settings
from app.core.errors import InvalidState, NotFound, ValidationFailed
from app.core.ids import new_id
from app.core.sql import any_of, in_chunks, is_pg
from app.examples import formats
from app.examples import service as examples
from app.models.access import PiiGrant
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision
from app.models.pii import PiiFinding, PiiScrub, PiiVaultEntry
from app.pii import fingerprint, nlp, tokens, vault
from app.pii.operators import ExampleOperators
from app.pii.paths import get_path, set_path
from app.pii.schemas import PiiPolicy, effective_policy

log = logging.getLogger(__name__)

ACTOR = "system:pii"
# Statuses the stage leaves alone. Exact duplicates are not among them: each holds its own copy of the raw
# text in its ingest revision, which must reach the vault like any other.
SKIP_STATUSES = ("erased", "rejected")
# A revision the stage itself produced is scrubbed already; running it again would re-find a span a
# reviewer restored as a false positive.
SCRUBBED_REASONS = ("pii_scrub", "pii_verdict")
VAULT_MARKER = "_pii_vault"


def engine():
    # Presidio and spaCy are imported here, on first use, not when the API imports this module.
    nlp.load()
    from app.pii.engine import get_engine

    return get_engine(get_settings().pii)


def hash_key() -> bytes:
    # Derived, not the secret itself: the HMAC key for PII hashes must not double as the session key.
    return hmac.new(get_settings().secret_key.encode(), b"pedigree-pii-hash-v1", hashlib.sha256).digest()


# --- vault ---------------------------------------------------------------------------------------------------

_ring_lock = threading.Lock()
_rings: dict[tuple, vault.KeyRing] = {}


def key_ring(session: Session | None = None) -> vault.KeyRing:
    core = get_settings()
    s = core.pii
    # Embedded mode keeps its own key file; elsewhere the service secret backs the vault (decrypt-only
    # once explicit keys are configured), so deployments need no extra secret to start.
    secret = None if core.is_embedded else core.secret_key
    cache_key = (s.vault_keys, str(s.vault_key_file.resolve()), core.is_embedded, core.database_url, secret)
    with _ring_lock:
        ring = _rings.get(cache_key)
        if ring is None:
            empty = None
            if session is not None:
                empty = session.scalar(select(PiiVaultEntry.id).limit(1)) is None
            try:
                ring = vault.load_key_ring(configured=s.vault_keys, key_file=s.vault_key_file,
                                           embedded=core.is_embedded, vault_empty=empty, secret=secret)
            except FileExistsError:  # another process created the key file a moment ago
                ring = vault.load_key_ring(configured=s.vault_keys, key_file=s.vault_key_file,
                                           embedded=core.is_embedded, vault_empty=False, secret=secret)
            _rings[cache_key] = ring
    return ring


def startup_check(session: Session) -> None:
    """Called by the API lifespan and by each worker at start: a missing vault key is fatal there, not at
    the first reveal weeks later."""
    ring = key_ring(session)
    ring.check_ring(session.scalars(select(PiiVaultEntry.key_id).distinct()))


def _aad(example_id: uuid.UUID, revision_id: uuid.UUID) -> str:
    return f"{example_id}:{revision_id}"


def seal_rows(ring: vault.KeyRing, items: list[tuple[uuid.UUID, uuid.UUID, dict]]) -> tuple[list, list]:
    """Vault rows for (example, revision, raw content) and the marker updates for the revision rows."""
    vault_rows, markers = [], []
    now = utcnow()
    for example_id, revision_id, content in items:
        sealed = ring.seal(orjson.dumps(content).decode(), aad=_aad(example_id, revision_id))
        entry_id = new_id()
        vault_rows.append({"id": entry_id, "example_id": example_id, "revision_id": revision_id,
                           "key_id": sealed.key_id, "ciphertext": sealed.blob, "created_at": now})
        markers.append({"rid": revision_id, "content": {VAULT_MARKER: str(entry_id)}})
    return vault_rows, markers


def write_vault(session: Session, vault_rows: list, markers: list) -> None:
    if not vault_rows:
        return
    session.execute(insert(PiiVaultEntry), vault_rows)
    session.execute(
        update(ExampleRevision.__table__)
        .where(ExampleRevision.__table__.c.id == bindparam("rid"))
        .values(content=bindparam("content")),
        markers,
    )


def raw_content(session: Session, example_id: uuid.UUID, revision_id: uuid.UUID) -> dict | None:
    entry = session.scalar(select(PiiVaultEntry).where(PiiVaultEntry.revision_id == revision_id))
    if entry is None:
        return None
    plain = key_ring(session).open(vault.Sealed(entry.key_id, entry.ciphertext), aad=_aad(example_id, revision_id))
    return orjson.loads(plain)


def raw_contents(session: Session, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> dict[uuid.UUID, dict]:
    """{example id: raw content} for (example, revision) pairs in one read; revisions never vaulted
    (nothing was found in them) are absent."""
    if not pairs:
        return {}
    pg = is_pg(session)
    by_rev = {r: e for e, r in pairs}
    ring = key_ring(session)
    out: dict[uuid.UUID, dict] = {}
    for part in in_chunks(list(by_rev), pg=pg):
        for entry in session.execute(select(PiiVaultEntry.revision_id, PiiVaultEntry.key_id, PiiVaultEntry.ciphertext)
                                     .where(any_of(PiiVaultEntry.revision_id, part, pg=pg))):
            eid = by_rev[entry.revision_id]
            out[eid] = orjson.loads(ring.open(vault.Sealed(entry.key_id, entry.ciphertext),
                                              aad=_aad(eid, entry.revision_id)))
    return out


# --- the stage -----------------------------------------------------------------------------------------------


def policy_of(dataset: Any) -> PiiPolicy:
    """The dataset's effective policy: its profile's preset with its own `pii_policy` over it (anything
    with those two attributes: a Dataset or a joined row)."""
    return effective_policy(getattr(dataset, "pii_profile", None), dataset.pii_policy)


def policy_sha(policy: PiiPolicy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def scrub_handler(*, session: Session, example_ids: list[uuid.UUID]) -> None:
    rows = session.execute(
        select(Example.id, Example.dataset_id, Example.status, ExampleRevision.id.label("rid"),
               ExampleRevision.seq, ExampleRevision.content, ExampleRevision.content_sha256,
               ExampleRevision.reason, Dataset.format, Dataset.pii_policy, Dataset.pii_profile,
               Dataset.workspace_id)
        .join(ExampleRevision, Example.current_revision_id == ExampleRevision.id)
        .join(Dataset, Dataset.id == Example.dataset_id)
        .where(Example.id.in_(example_ids))
    ).all()
    done = {tuple(r) for r in session.execute(
        select(PiiScrub.example_id, PiiScrub.source_revision_id).where(PiiScrub.example_id.in_(example_ids))
    ).all()}
    # Exact duplicates stop after their scrub: dedup and review happen once, on their canonical twin.
    dups = sorted(r.id for r in rows if r.status == "duplicate")
    if dups:
        t = Example.__table__
        session.execute(update(t).where(t.c.id.in_(dups)).values(stage=None, updated_at=utcnow()))
    todo = [r for r in rows if (r.id, r.rid) not in done and r.status not in SKIP_STATUSES
            and r.reason not in SCRUBBED_REASONS and VAULT_MARKER not in r.content]
    by_dataset: dict[uuid.UUID, list] = defaultdict(list)
    for r in todo:
        by_dataset[r.dataset_id].append(r)

    nlp.load()
    from app.pii.scrub import ScrubInput, scrub_examples

    eng, hk, tk = engine(), hash_key(), tokens.token_key()
    ring = key_ring(session) if todo else None
    now = utcnow()
    rev_rows, scrub_rows, finding_rows, example_updates = [], [], [], []
    to_vault: list[tuple[uuid.UUID, uuid.UUID, dict]] = []
    # A stage batch may mix datasets of several workspaces: one audit event per workspace, each counting
    # only its own examples (an auditor of one team must not read another's figures).
    per_ws: dict[uuid.UUID, dict[str, int]] = {}
    for dataset_id, group in by_dataset.items():
        policy = policy_of(group[0])
        if not policy.enabled:
            continue
        counts = per_ws.setdefault(group[0].workspace_id, {"examples": 0, "revisions": 0, "findings": 0,
                                                           "flagged": 0})
        sha = policy_sha(policy)
        # Exact duplicates of one another get the same key, hence the same surrogates and the same output.
        items = [ScrubInput(r.content, key=f"{dataset_id}:{r.content_sha256}",
                            fields=formats.text_fields(r.format, r.content)) for r in group]
        for r, res in zip(group, scrub_examples(eng, items, policy, hash_key=hk, token_key=tk)):
            result_rid = r.rid
            counts["examples"] += 1
            if res.findings:
                counts["revisions"] += 1
                counts["findings"] += len(res.findings)
                result_rid = new_id()
                rev_rows.append({"id": result_rid, "example_id": r.id, "seq": r.seq + 1, "content": res.content,
                                 "content_sha256": formats.content_sha256(res.content), "parent_id": r.rid,
                                 "reason": "pii_scrub", "author": ACTOR, "created_at": now})
                to_vault.append((r.id, r.rid, r.content))
                finding_rows.extend(finding_row(f, r.id, dataset_id, result_rid, r.rid, now) for f in res.findings)
            if res.flags:
                counts["flagged"] += 1
            scrub_rows.append({"id": new_id(), "example_id": r.id, "dataset_id": dataset_id,
                               "source_revision_id": r.rid, "source_sha256": r.content_sha256,
                               "result_revision_id": result_rid, "policy_sha256": sha,
                               "findings": len(res.findings), "flags": res.flags, "engine": eng.info.engine,
                               "model": eng.info.model, "created_at": now})
            example_updates.append({"eid": r.id, "rid": result_rid,
                                    "status": "scrubbed" if r.status == "ingested" else r.status, "now": now})
    if not scrub_rows:
        return
    recognizers = fingerprint.register(session, eng)["recognizers"]
    for row in scrub_rows:
        row["recognizers"] = recognizers
    if rev_rows:
        session.execute(insert(ExampleRevision), rev_rows)
    vault_rows, markers = seal_rows(ring, to_vault)
    write_vault(session, vault_rows, markers)
    # The unique (example, source revision) constraint turns a concurrent double scrub into an error that
    # rolls this whole batch back, instead of a second scrubbed revision.
    session.execute(insert(PiiScrub), scrub_rows)
    if finding_rows:
        session.execute(insert(PiiFinding), finding_rows)
    t = Example.__table__
    session.execute(
        update(t).where(t.c.id == bindparam("eid"))
        .values(current_revision_id=bindparam("rid"), status=bindparam("status"), updated_at=bindparam("now")),
        example_updates,
    )
    for workspace_id, counts in per_ws.items():
        if counts["examples"]:
            audit.record(session, actor=ACTOR, action="pii.scrubbed", entity_type="example_batch",
                         payload={**counts, "engine": eng.info.engine, "model": eng.info.model},
                         workspace_id=workspace_id)


def finding_row(f, example_id, dataset_id, revision_id, source_revision_id, now) -> dict:
    return {"id": new_id(), "example_id": example_id, "dataset_id": dataset_id, "revision_id": revision_id,
            "source_revision_id": source_revision_id, "field_path": f.field_path, "entity_type": f.entity_type,
            "start": f.start, "end": f.end, "scrubbed_start": f.scrubbed_start, "scrubbed_end": f.scrubbed_end,
            "score": f.score, "recognizer": f.recognizer, "operator": f.operator, "engine": f.engine,
            "model": f.model, "verdict": None, "verdict_by": None, "verdict_at": None,
            "value_token": f.value_token, "value_words": f.value_words, "created_at": now}


# --- reading -------------------------------------------------------------------------------------------------


def finding_view(f: PiiFinding) -> dict[str, Any]:
    return {"id": str(f.id), "revision_id": str(f.revision_id), "field_path": f.field_path,
            "entity_type": f.entity_type, "start": f.start, "end": f.end, "scrubbed_start": f.scrubbed_start,
            "scrubbed_end": f.scrubbed_end, "score": f.score, "recognizer": f.recognizer, "operator": f.operator,
            "engine": f.engine, "model": f.model, "verdict": f.verdict, "verdict_by": f.verdict_by}


def findings_for(session: Session, revision_id: uuid.UUID | None) -> list[PiiFinding]:
    if revision_id is None:
        return []
    return list(session.scalars(
        select(PiiFinding).where(PiiFinding.revision_id == revision_id)
        .order_by(PiiFinding.field_path, PiiFinding.scrubbed_start)
    ))


def view_hook(session: Session, ex: Example, out: dict[str, Any], actor: Actor) -> None:
    out["pii_findings"] = [finding_view(f) for f in findings_for(session, ex.current_revision_id)]
    scrub = session.scalar(select(PiiScrub).where(PiiScrub.example_id == ex.id)
                           .order_by(PiiScrub.created_at.desc()).limit(1))
    out["pii"] = None if scrub is None else {
        "scrubbed": True, "findings": scrub.findings, "flags": scrub.flags, "engine": scrub.engine,
        "model": scrub.model, "source_revision_id": str(scrub.source_revision_id),
    }


def reveal_raw(session: Session, *, example_id: str, actor: Actor) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    grant = grants.require_active(session, actor=actor, dataset_id=ex.dataset_id, what="example.raw",
                                  entity_type="example", entity_id=ex.id)
    first = session.scalar(select(ExampleRevision).where(ExampleRevision.example_id == ex.id)
                           .order_by(ExampleRevision.seq).limit(1))
    if first is None:
        raise NotFound(f"example {example_id} has no revision")
    content = raw_content(session, ex.id, first.id)
    source = "vault"
    if content is None:
        if VAULT_MARKER in first.content:  # pragma: no cover - marker without a vault row is corruption
            raise InvalidState("the raw content of this example is missing from the vault")
        # Nothing was ever found in it, so nothing was vaulted: the ingest revision is the raw text.
        content, source = first.content, "revision"
    audit.record(session, actor=actor.ref, action="example.raw_revealed", entity_type="example", entity_id=ex.id,
                 payload={"revision_id": str(first.id), "source": source, **grants.audit_fields(grant)})
    metrics.inc(metrics.VAULT_REVEALS)
    return {"id": str(ex.id), "revision_id": str(first.id), "content": content, "source": source}


# --- verdicts ------------------------------------------------------------------------------------------------


def _finding(session: Session, ex: Example, finding_id: str) -> PiiFinding:
    try:
        f = session.get(PiiFinding, uuid.UUID(str(finding_id)))
    except ValueError:
        f = None
    if f is None or f.example_id != ex.id:
        raise NotFound(f"finding {finding_id} not found on example {ex.id}")
    return f


def _new_revision(session: Session, ex: Example, content: dict, actor: Actor, comment: str) -> ExampleRevision:
    seq = session.scalar(select(func.max(ExampleRevision.seq)).where(ExampleRevision.example_id == ex.id)) or 0
    rev = ExampleRevision(id=new_id(), example_id=ex.id, seq=seq + 1, content=content,
                          content_sha256=formats.content_sha256(content), parent_id=ex.current_revision_id,
                          reason="pii_verdict", author=actor.ref, comment=comment)
    session.add(rev)
    session.flush()
    ex.current_revision_id = rev.id
    if ex.status == "approved":  # content changed under an approval: it goes back to review
        ex.status = "pending_review"
    ex.updated_at = utcnow()
    return rev


def _carry_findings(session: Session, old: list[PiiFinding], new_rev: ExampleRevision, *, skip: uuid.UUID | None,
                    path: str, at: int, delta: int) -> None:
    """Copy the current revision's findings onto the new one, shifting those after an edit in the same field."""
    rows = []
    for f in old:
        if f.id == skip or f.verdict == "false_positive":
            continue
        shift = delta if f.field_path == path and f.scrubbed_start >= at else 0
        row = {c: getattr(f, c) for c in ("example_id", "dataset_id", "source_revision_id", "field_path",
                                          "entity_type", "start", "end", "score", "recognizer", "operator",
                                          "engine", "model", "verdict", "verdict_by", "verdict_at", "value_token",
                                          "value_words")}
        row.update(id=new_id(), revision_id=new_rev.id, scrubbed_start=f.scrubbed_start + shift,
                   scrubbed_end=f.scrubbed_end + shift, created_at=utcnow())
        rows.append(row)
    if rows:
        session.execute(insert(PiiFinding), rows)


def set_verdict(session: Session, *, example_id: str, finding_id: str, verdict: str, actor: Actor) -> dict:
    ex = examples.get(session, example_id)
    f = _finding(session, ex, finding_id)
    if f.revision_id != ex.current_revision_id:
        raise InvalidState("the finding belongs to an older revision; judge the current one",
                           details={"current_revision_id": str(ex.current_revision_id)})
    if f.verdict == "false_positive":
        raise InvalidState("the finding is already marked a false positive")
    now = utcnow()
    if verdict == "confirmed":
        f.verdict, f.verdict_by, f.verdict_at = "confirmed", actor.ref, now
        session.flush()
        audit.record(session, actor=actor.ref, action="pii.finding.confirmed", entity_type="pii_finding",
                     entity_id=f.id, payload={"example_id": str(ex.id), "entity_type": f.entity_type})
        return {"finding": finding_view(f), "revision_id": str(ex.current_revision_id)}

    raw = raw_content(session, ex.id, f.source_revision_id)
    if raw is None:
        raise InvalidState("the raw text of this finding is not in the vault (erased?)")
    current = session.get(ExampleRevision, ex.current_revision_id)
    content = orjson.loads(orjson.dumps(current.content))
    value = get_path(raw, f.field_path)[f.start : f.end]
    text = get_path(content, f.field_path)
    set_path(content, f.field_path, text[: f.scrubbed_start] + value + text[f.scrubbed_end :])
    old = findings_for(session, current.id)
    f.verdict, f.verdict_by, f.verdict_at = "false_positive", actor.ref, now
    rev = _new_revision(session, ex, content, actor, f"restored {f.entity_type} at {f.field_path} (false positive)")
    _carry_findings(session, old, rev, skip=f.id, path=f.field_path, at=f.scrubbed_end,
                    delta=len(value) - (f.scrubbed_end - f.scrubbed_start))
    session.flush()
    audit.record(session, actor=actor.ref, action="pii.finding.false_positive", entity_type="pii_finding",
                 entity_id=f.id, payload={"example_id": str(ex.id), "entity_type": f.entity_type,
                                          "field_path": f.field_path, "from_revision_id": str(current.id),
                                          "revision_id": str(rev.id)})
    return {"finding": finding_view(f), "revision_id": str(rev.id)}


def add_missed(session: Session, *, example_id: str, field_path: str, start: int, end: int, entity_type: str,
               actor: Actor) -> dict:
    """A reviewer marks a span of the current text that the scrubber missed: every occurrence of that value
    in the example is scrubbed with the dataset's operator for the type, in a new revision."""
    ex = examples.get(session, example_id)
    ds = session.get(Dataset, ex.dataset_id)
    current = session.get(ExampleRevision, ex.current_revision_id)
    content = orjson.loads(orjson.dumps(current.content))
    paths = dict(formats.text_fields(ds.format, content))
    if field_path not in paths:
        raise ValidationFailed("field_path is not a text field of this example", details=[
            {"field": "field_path", "code": "invalid", "message": f"one of {sorted(paths)}"}])
    text = paths[field_path]
    if not 0 <= start < end <= len(text) or not text[start:end].strip():
        raise ValidationFailed("start/end do not select text in the field", details=[
            {"field": "end", "code": "invalid", "message": f"0 <= start < end <= {len(text)}"}])
    value = text[start:end]
    policy = policy_of(ds)
    operators = ExampleOperators(policy, hash_key(), f"{ex.dataset_id}:{current.content_sha256}")
    replacement = operators.replace(entity_type, value)
    old = findings_for(session, current.id)
    now = utcnow()
    new_findings = []
    shifts: dict[uuid.UUID, int] = defaultdict(int)
    for path, field_text in paths.items():
        out, pos, shift_points = [], 0, []
        i = field_text.find(value)
        while i != -1:
            out.append(field_text[pos:i])
            new_start = sum(len(p) for p in out)
            out.append(replacement)
            new_findings.append((path, i, new_start, new_start + len(replacement)))
            shift_points.append((i + len(value), len(replacement) - len(value)))
            pos = i + len(value)
            i = field_text.find(value, pos)
        if shift_points:
            out.append(field_text[pos:])
            set_path(content, path, "".join(out))
            for f in old:
                if f.field_path == path:
                    shifts[f.id] += sum(delta for at, delta in shift_points if f.scrubbed_start >= at)
    # The text that still held the missed value goes to the vault like any raw text.
    if session.scalar(select(PiiVaultEntry.id).where(PiiVaultEntry.revision_id == current.id)) is None:
        vault_rows, markers = seal_rows(key_ring(session), [(ex.id, current.id, current.content)])
        rev = _new_revision(session, ex, content, actor, f"reviewer added missed {entity_type} at {field_path}")
        write_vault(session, vault_rows, markers)
    else:  # pragma: no cover - a pii_verdict revision is never vaulted twice
        rev = _new_revision(session, ex, content, actor, f"reviewer added missed {entity_type} at {field_path}")
    rows = []
    for f in old:
        if f.verdict == "false_positive":
            continue
        shift = shifts[f.id]
        row = {c: getattr(f, c) for c in ("example_id", "dataset_id", "source_revision_id", "field_path",
                                          "entity_type", "start", "end", "score", "recognizer", "operator",
                                          "engine", "model", "verdict", "verdict_by", "verdict_at", "value_token",
                                          "value_words")}
        row.update(id=new_id(), revision_id=rev.id, scrubbed_start=f.scrubbed_start + shift,
                   scrubbed_end=f.scrubbed_end + shift, created_at=now)
        rows.append(row)
    added_ids = []
    for path, at, s2, e2 in new_findings:
        fid = new_id()
        added_ids.append(str(fid))
        rows.append({"id": fid, "example_id": ex.id, "dataset_id": ex.dataset_id, "revision_id": rev.id,
                     "source_revision_id": current.id, "field_path": path, "entity_type": entity_type,
                     "start": at, "end": at + len(value), "scrubbed_start": s2, "scrubbed_end": e2, "score": 1.0,
                     "recognizer": "reviewer", "operator": operators.spec(entity_type).type.value,
                     "engine": "reviewer", "model": "reviewer", "verdict": "added", "verdict_by": actor.ref,
                     "verdict_at": now, "value_token": tokens.value_token(tokens.token_key(), value),
                     "value_words": tokens.word_count(value),
                     "created_at": now})
    session.execute(insert(PiiFinding), rows)
    session.flush()
    audit.record(session, actor=actor.ref, action="pii.finding.added", entity_type="example", entity_id=ex.id,
                 payload={"entity_type": entity_type, "field_path": field_path, "occurrences": len(new_findings),
                          "from_revision_id": str(current.id), "revision_id": str(rev.id), "findings": added_ids})
    return {"revision_id": str(rev.id), "added": added_ids,
            "findings": [finding_view(f) for f in findings_for(session, rev.id)]}


# --- report --------------------------------------------------------------------------------------------------


def report(session: Session, *, dataset_ref: str, actor: Actor | None = None, top: int = 20,
           reveal: bool = False) -> dict[str, Any]:
    from app.datasets import service as datasets

    ds = datasets.get(session, dataset_ref)
    grant = None
    if reveal and actor is not None:
        grant = grants.require_active(session, actor=actor, dataset_id=ds.id, what="pii.report.values",
                                      entity_type="dataset", entity_id=ds.id)
    scrubs = session.execute(
        select(func.count(), func.coalesce(func.sum(PiiScrub.findings), 0)).where(PiiScrub.dataset_id == ds.id)
    ).one()
    # Findings carried onto later revisions are copies; count each detection once, on the scrub revision.
    rows = session.execute(
        select(PiiFinding.entity_type, PiiFinding.verdict, func.count())
        .join(ExampleRevision, ExampleRevision.id == PiiFinding.revision_id)
        .where(PiiFinding.dataset_id == ds.id,
               (ExampleRevision.reason == "pii_scrub") | (PiiFinding.verdict == "added"))
        .group_by(PiiFinding.entity_type, PiiFinding.verdict)
    ).all()
    # Carried copies repeat a judgement: count verdicts on current revisions, plus false positives (which are
    # never carried, they stay on the revision they were judged on).
    verdict_rows = session.execute(
        select(PiiFinding.entity_type, PiiFinding.verdict, func.count())
        .join(Example, Example.id == PiiFinding.example_id)
        .where(PiiFinding.dataset_id == ds.id, PiiFinding.verdict.is_not(None),
               (PiiFinding.verdict == "false_positive") | (PiiFinding.revision_id == Example.current_revision_id))
        .group_by(PiiFinding.entity_type, PiiFinding.verdict)
    ).all()
    by_type: dict[str, dict[str, int]] = defaultdict(
        lambda: {"found": 0, "confirmed": 0, "false_positive": 0, "added": 0})
    for et, verdict, n in rows:
        if verdict != "added":
            by_type[et]["found"] += n
    for et, verdict, n in verdict_rows:
        by_type[et][verdict] += n
    fp = sum(v["false_positive"] for v in by_type.values())
    confirmed = sum(v["confirmed"] for v in by_type.values())
    added = sum(v["added"] for v in by_type.values())
    flags = defaultdict(int)
    for f in session.scalars(select(PiiScrub.flags).where(PiiScrub.dataset_id == ds.id, PiiScrub.findings >= 0)):
        for k in f or {}:
            flags[k] += 1
    return {
        "dataset_id": str(ds.id),
        "examples_scrubbed": scrubs[0],
        "findings": int(scrubs[1]),
        "by_entity": dict(sorted(by_type.items())),
        "reviewed": fp + confirmed,
        "false_positives": fp,
        "false_positive_rate": round(fp / (fp + confirmed), 4) if fp + confirmed else None,
        "missed_added": added,
        "flags": dict(flags),
        "top_values": top_values(session, ds, top=top, actor=actor if reveal else None, grant=grant),
        "rescrub_pending": _rescrub_pending(session, ds),
    }


def _rescrub_pending(session: Session, ds: Dataset) -> int:
    from app.pii import rescrub

    q = rescrub.candidates(ds.id, policy_sha(policy_of(ds)))
    return session.scalar(select(func.count()).select_from(q.subquery())) or 0


def may_read_raw(actor: Actor | None) -> bool:
    return actor is not None and (actor.role == "admin" or actor.role in RAW_PII_READERS)


def top_values(session: Session, ds: Dataset, *, top: int, actor: Actor | None,
               grant: PiiGrant | None = None) -> dict[str, list[dict[str, Any]]]:
    """The most frequent values scrubbed in the current revisions, per entity type: each as its token (the
    HMAC a curator allows it by, app/pii/tokens.py), with how many findings and examples hold it; the value
    itself only when an `actor` who reads raw PII (admin) asks for it, decrypted from the vault, audited."""
    n, n_ex = func.count().label("n"), func.count(PiiFinding.example_id.distinct()).label("n_ex")
    grouped = (
        select(PiiFinding.entity_type, PiiFinding.value_token, n, n_ex)
        .join(Example, (Example.id == PiiFinding.example_id) & (Example.current_revision_id == PiiFinding.revision_id))
        .where(PiiFinding.dataset_id == ds.id, PiiFinding.value_token.is_not(None), Example.status != "erased")
        .group_by(PiiFinding.entity_type, PiiFinding.value_token)
    ).subquery()
    rank = func.row_number().over(partition_by=grouped.c.entity_type,
                                  order_by=(grouped.c.n.desc(), grouped.c.value_token)).label("rank")
    ranked = select(grouped, rank).subquery()
    rows = session.execute(select(ranked).where(ranked.c.rank <= top)
                           .order_by(ranked.c.entity_type, ranked.c.rank)).all()
    policy = policy_of(ds)
    allowed = set(policy.allow_tokens)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # Values only under a grant (report() checked it): a caller without one never reaches the vault.
    reveal = may_read_raw(actor) and grant is not None
    raws: dict[uuid.UUID, dict | None] = {}
    for r in rows:
        item: dict[str, Any] = {"token": r.value_token, "findings": r.n, "examples": r.n_ex,
                                "allowed": r.value_token in allowed}
        if reveal:
            item["value"] = _value_of(session, ds.id, r.value_token, raws)
        out[r.entity_type].append(item)
    if reveal and rows:
        audit.record(session, actor=actor.ref, action="pii.report.values_revealed", entity_type="dataset",
                     entity_id=ds.id, payload={"values": len(rows), "top": top, **grants.audit_fields(grant)})
    return dict(out)


def _value_of(session: Session, dataset_id: uuid.UUID, token: str, raws: dict) -> str | None:
    f = session.execute(
        select(PiiFinding.example_id, PiiFinding.source_revision_id, PiiFinding.field_path, PiiFinding.start,
               PiiFinding.end)
        .where(PiiFinding.dataset_id == dataset_id, PiiFinding.value_token == token,
               PiiFinding.verdict.is_distinct_from("added")).limit(1)
    ).first()
    if f is None:
        return None
    if f.source_revision_id not in raws:
        raws[f.source_revision_id] = raw_content(session, f.example_id, f.source_revision_id)
    raw = raws[f.source_revision_id]
    if raw is None:
        return None
    try:
        return get_path(raw, f.field_path)[f.start : f.end]
    except (KeyError, IndexError, TypeError):
        return None


# --- allow list ----------------------------------------------------------------------------------------------


def allow_value(session: Session, *, ds: Dataset, actor: Actor, value: str | None = None,
                token: str | None = None) -> dict[str, Any]:
    """Allow a value for the dataset, given as itself or as its token from the report (a curator reads only
    tokens), and queue a re-scrub of the examples whose current revision scrubbed it."""
    from app.pii import rescrub

    stored = dict(ds.pii_policy or {})
    if value is not None:
        token = tokens.value_token(tokens.token_key(), value)
        have = list(stored.get("allow_list", []))
        if value.strip().casefold() not in {v.strip().casefold() for v in have}:
            stored["allow_list"] = [*have, value]
    else:
        have = list(stored.get("allow_tokens", []))
        if token not in have:
            stored["allow_tokens"] = [*have, token]
    try:
        policy = PiiPolicy.model_validate(stored)
    except ValidationError as e:
        raise ValidationFailed("the allow list is full", details=[
            {"field": "pii_policy." + ".".join(map(str, err["loc"])), "code": err["type"], "message": err["msg"]}
            for err in e.errors()]) from None
    ds.pii_policy = stored
    session.flush()
    audit.record(session, actor=actor.ref, action="dataset.pii_allow_list_added", entity_type="dataset",
                 entity_id=ds.id, payload={"token": token, "given": "value" if value is not None else "token",
                                           **({"value": value} if value is not None else {})})
    queued = rescrub.request(session, ds, actor=actor, reason="allow_list", value_tokens=[token])
    return {"token": token, "pii_policy": policy.model_dump(mode="json"), "rescrub": queued}
