"""Every operation of the served OpenAPI document x every role, no key and a revoked key, against the
matrix in docs/security.md: exactly the documented access, in both directions.

One app, one SQLite database, requests in-process. Path parameters are real ids (a dataset, examples,
a PII finding, two snapshots, runs, a registered model version with an alias, an erasure request), so
an allowed role reaches the operation itself and a 404 cannot stand in for a 403.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.factories import (
    NDJSON,
    approved_dataset,
    complete_body,
    fake_artifact,
    freeze,
    instruction_line,
    key_id,
    reveal_grant,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROLES = ("admin", "curator", "reviewer", "trainer", "auditor")
ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (\S+)` \|(.*)\|\s*$")


def documented() -> dict[tuple[str, str], set[str] | None]:
    """(method, path) -> the roles allowed, or None for an operation that needs no key."""
    header = None
    out: dict[tuple[str, str], set[str] | None] = {}
    text = DOC.read_text()
    section = text.split("\n## The matrix\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith("| operation |"):
            header = [c.strip() for c in line.strip("|").split("|")][1:]
            assert tuple(header) == ROLES, header
            continue
        m = ROW.match(line)
        if m and header:
            cells = [c.strip() for c in m.group(3).split("|")]
            assert len(cells) == len(ROLES) and set(cells) <= {"yes", "—", "public"}, line
            key = (m.group(1), m.group(2))
            assert key not in out, f"{key} twice in docs/security.md"
            out[key] = None if "public" in cells else {r for r, c in zip(ROLES, cells, strict=True) if c == "yes"}
    return out


def _call(api, role: str | None, method: str, url: str, req: dict[str, Any]):
    headers = dict(req.get("headers", {}))
    if role is not None:
        headers["Authorization"] = f"Bearer {api.keys[role]}"
    kw = {k: v for k, v in req.items() if k != "headers"}
    return api.client.request(method, url, headers=headers, **kw)


@pytest.fixture
def world(api, dispatched, artifact_root):
    """Real ids for every path parameter, and a key to revoke."""
    from app.core import auth
    from app.core.db import session_scope

    cur = api.as_("curator")
    ds, approved = approved_dataset(api, n=6)
    # Stratified (one stratum): exactly 2 of 6 in validation, so a run on it always has train examples.
    a = freeze(api, ds, name="a", validation_fraction=0.25, seed="1", stratify_by="lang")
    b = freeze(api, ds, name="b", validation_fraction=0.5, seed="2")
    line = {"instruction": "Write to alice.quill@example.com about the invoice.", "output": "Done.",
            "provenance": {"source": "mail", "source_ref": "m-1", "license": "CC-BY-4.0"}}
    imp = cur.post(f"/v1/datasets/{ds['id']}/examples:import", content=orjson.dumps(line) + b"\n", headers=NDJSON)
    assert imp.status_code == 200, imp.text
    pending = cur.get(f"/v1/datasets/{ds['id']}/examples", params={"source_ref": "m-1"}).json()["items"][0]["id"]
    findings = cur.get(f"/v1/examples/{pending}/pii-findings").json()["items"]
    assert findings, "the email should have been found"

    body = {"snapshot_id": a["id"], "base_model": "Qwen/Qwen2.5-0.5B", "method": "lora", "model_name": "role-model",
            "hyperparameters": {"epochs": 1, "max_steps": 3, "batch_tokens": 1024, "max_seq_len": 256}}
    done = cur.post("/v1/training-runs", json=body).json()
    assert api.as_("trainer").post(f"/v1/training-runs/{done['id']}/start", json={"worker_host": "gpu"}).status_code == 200
    recs = api.as_("trainer").get(f"/v1/snapshots/{a['id']}/export", params={"format": "pedigree"}).content.splitlines()
    uri, sha = fake_artifact(artifact_root, "role-model", done["id"])
    r = api.as_("trainer").post(f"/v1/training-runs/{done['id']}/complete",
                                json=complete_body([orjson.loads(x) for x in recs], uri, sha))
    assert r.status_code == 200, r.text
    assert cur.post("/v1/models/role-model/aliases/production", json={"version": 1}).status_code == 200
    evaluation = cur.post("/v1/models/role-model/versions/1/evaluations", json={"suites": ["heldout"]})
    assert evaluation.status_code == 202, evaluation.text
    live = cur.post("/v1/training-runs", json=body).json()
    revalidation = cur.post(f"/v1/datasets/{ds['id']}/revalidations", json={"triggers": ["recognizers"]})
    assert revalidation.status_code == 202, revalidation.text
    erasure = cur.post("/v1/erasure-requests", json={"selector": {"source_refs": ["m-1"]}, "reason": "test",
                                                     "dry_run": True})
    assert erasure.status_code in (200, 201), erasure.text

    with session_scope() as s:
        row, revoked = auth.create_key(s, name="to-revoke", role="curator")
        revoked_id = row.id
    assert api.as_("admin").delete(f"/v1/keys/{revoked_id}").status_code == 200
    api.keys["revoked"] = revoked

    def fresh_key_id() -> str:  # DELETE /v1/keys/{id} revokes what it names: a new victim each call
        with session_scope() as s:
            return str(auth.create_key(s, name="victim", role="trainer")[0].id)

    reveal_grant(api, ds["id"])  # the admin's reveals are under a grant; without one they are 403 no_grant
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    grant_body = {"key_id": key_id(api.keys["admin2"]), "dataset": ds["id"], "purpose": "role test", "expires_at": until}

    def fresh_grant_id() -> str:  # approve and revoke change what they name: a pending grant each call
        r = api.as_("admin2").post("/v1/pii-grants", json=grant_body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    example_ref = approved[0]
    revision = cur.get(f"/v1/examples/{pending}").json()["revision"]["id"]
    params = {"dataset_ref": ds["id"], "example_id": pending, "batch_id": imp.json()["batch_id"],
              "key_id": fresh_key_id, "finding_id": findings[0]["id"], "snapshot_id": a["id"], "a": a["id"],
              "b": b["id"], "run_id": live["id"], "name": "role-model", "version": "1", "alias": "production",
              "source": "helpdesk", "license": "CC-BY-4.0", "reviewer": "test-reviewer",
              "request_id": erasure.json()["id"], "evaluation_id": evaluation.json()["id"],
              "revalidation_id": revalidation.json()["id"],
              "grant_id": fresh_grant_id, "workspace_id": "default"}
    item = {"example_id": pending, "revision_id": revision}
    requests: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/datasets"): {"json": {"name": f"ds-{uuid.uuid4().hex[:8]}", "format": "instruction"}},
        ("PATCH", "/v1/datasets/{dataset_ref}"): {"json": {"description": "checked by the role test"}},
        ("POST", "/v1/datasets/{dataset_ref}/examples"): {"json": {"instruction": "Say hi.", "output": "Hi."}},
        ("POST", "/v1/datasets/{dataset_ref}/examples:import"): {
            "content": orjson.dumps(instruction_line(99)) + b"\n", "headers": NDJSON},
        ("POST", "/v1/keys"): {"json": {"name": "made-by-test", "role": "auditor"}},
        ("POST", "/v1/datasets/{dataset_ref}/revalidations"): {"json": {"triggers": ["recognizers"]}},
        ("POST", "/v1/pii-grants"): {"json": grant_body},
        ("POST", "/v1/workspaces"): {"json": {"name": f"ws-{uuid.uuid4().hex[:8]}"}},
        ("POST", "/v1/workspaces/{workspace_id}/members"): {"json": {"key_id": fresh_key_id(), "role": "auditor"}},
        ("POST", "/v1/examples/{example_id}/pii-findings"): {
            "json": {"field_path": "output", "start": 0, "end": 4, "entity_type": "PERSON"}},
        ("POST", "/v1/examples/{example_id}/pii-findings/{finding_id}/verdict"): {"json": {"verdict": "confirmed"}},
        ("PUT", "/v1/datasets/{dataset_ref}/pii-policy"): {"json": {}},
        ("POST", "/v1/datasets/{dataset_ref}/pii-policy/allow-list"): {"json": {"token": "0123456789abcdef"}},
        ("GET", "/v1/review/queue"): {"params": {"dataset": ds["id"]}},
        ("GET", "/v1/review/stats"): {"params": {"dataset": ds["id"]}},
        ("POST", "/v1/examples/{example_id}/reviews"): {"json": {"decision": "approve", "revision_id": revision}},
        ("POST", "/v1/reviews:bulk"): {"json": {"decision": "approve", "items": [item]}},
        ("POST", "/v1/examples/{example_id}/comparisons"): {
            "json": {"revision_id": revision, "pick": "a", "reason_code": "more_helpful"}},
        ("POST", "/v1/examples/{example_id}/revisions"): {
            "json": {"content": {"instruction": "Write about the invoice.", "input": "", "output": "Done."}}},
        ("POST", "/v1/examples/{example_id}/suggestions"): {"json": {"model": "judge", "label": "approve"}},
        ("POST", "/v1/snapshots"): {"json": {"dataset_id": ds["id"], "name": f"s-{uuid.uuid4().hex[:6]}"}},
        ("GET", "/v1/snapshots/{snapshot_id}/proof"): {"params": {"example_id": example_ref}},
        ("POST", "/v1/snapshots/{snapshot_id}/proofs"): {"json": {"example_ids": [example_ref]}},
        ("POST", "/v1/examples/{example_id}/dedup:overrule"): {"json": {"decision": "not_duplicate", "reason": "x"}},
        ("POST", "/v1/training-runs"): {"json": body},
        ("POST", "/v1/training-runs/{run_id}/events"): {"json": {"events": [{"kind": "log", "message": "hi"}]}},
        ("POST", "/v1/training-runs/{run_id}/start"): {"json": {"worker_host": "gpu-2"}},
        ("POST", "/v1/training-runs/{run_id}/complete"): {"json": {"artifact_uri": "file:///nowhere.tar.gz",
                                                                   "artifact_sha256": "0" * 64, "examples": []}},
        ("POST", "/v1/training-runs/{run_id}/fail"): {"json": {"code": "out_of_memory", "message": "x"}},
        ("PATCH", "/v1/models/{name}/versions/{version}"): {"json": {"status": "candidate"}},
        ("POST", "/v1/models/{name}/aliases/{alias}"): {"json": {"version": 1}},
        ("POST", "/v1/models/{name}/versions/{version}/evaluations"): {"json": {"suites": ["heldout"]}},
        ("PUT", "/v1/models/{name}/policy"): {"json": {"gates": [], "gated_aliases": []}},
        ("POST", "/v1/evaluations/{evaluation_id}/start"): {"json": {"worker_host": "gpu-2"}},
        ("POST", "/v1/evaluations/{evaluation_id}/events"): {"json": {"events": [{"kind": "heartbeat"}]}},
        ("POST", "/v1/evaluations/{evaluation_id}/complete"): {"json": {"results": {"heldout": {}}}},
        ("POST", "/v1/evaluations/{evaluation_id}/fail"): {"json": {"code": "oom", "message": "x"}},
        ("POST", "/v1/erasure-requests"): {"json": {"selector": {"source_refs": ["m-1"]}, "reason": "x",
                                                    "dry_run": True}},
    }
    return params, requests


def _url(path: str, params: dict[str, Any]) -> str:
    def fill(m: re.Match) -> str:
        v = params[m.group(1).split(":")[0]]
        return v() if callable(v) else v

    return re.sub(r"\{([^}]+)\}", fill, path)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_every_operation_answers_every_role_as_documented(api, world):
    params, requests = world
    matrix = documented()
    served = {(m.upper(), p) for p, item in api.client.get("/openapi.json").json()["paths"].items() for m in item}
    assert served == set(matrix), (f"undocumented: {sorted(served - set(matrix))}; "
                                   f"documented but not served: {sorted(set(matrix) - served)}")
    assert set(requests) <= served, sorted(set(requests) - served)

    wrong = []
    for (method, path), allowed in sorted(matrix.items(), key=lambda kv: kv[0][1]):
        req = requests.get((method, path), {})
        # Denied roles and missing keys first: they must change nothing, so the allowed calls after
        # them still find the world as it was built.
        for who in (None, "revoked", *sorted(ROLES, key=lambda r: allowed is None or r in allowed)):
            r = _call(api, who, method, _url(path, params), req)
            if allowed is None:
                ok = r.status_code not in (401, 403)
                want = "not 401/403 (public)"
            elif who in (None, "revoked"):
                ok = r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
                want = "401"
            elif who in allowed:
                ok = r.status_code not in (401, 403) and r.status_code < 500
                want = "allowed"
            else:
                ok = r.status_code == 403 and r.json()["error"]["details"]["role"] == who
                want = "403 for the role"
            if not ok:
                wrong.append(f"{method} {path} as {who or 'no key'}: {r.status_code} {r.text[:160]} (want {want})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_denied_before_lookup_and_validation(api):
    """A denied role learns nothing about ids or bodies: 403 for an id that exists and one that does
    not, with a valid body and with none."""
    missing = str(uuid.uuid4())
    for role in ("trainer", "auditor"):
        for path in (f"/v1/datasets/{missing}/duplicates", f"/v1/datasets/{missing}/dedup",
                     f"/v1/datasets/{missing}/pii-report"):
            r = api.as_(role).get(path)
            assert r.status_code == 403, (role, path, r.text)
        r = api.as_(role).post(f"/v1/examples/{missing}/pii-findings/{missing}/verdict")
        assert r.status_code == 403, r.text
    assert api.as_("reviewer").post("/v1/training-runs", json={"nonsense": True}).status_code == 403
    assert api.as_("curator").get(f"/v1/datasets/{missing}/pii-report").status_code == 404
