"""Shared test data: API clients with one key per role, datasets, examples, snapshots, exports,
training artifacts and trainer records. Plain functions; fixtures stay in the conftest files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

NDJSON = {"Content-Type": "application/x-ndjson"}


def stdlib_content_sha256(content: dict) -> str:
    """The trainer's formula, written independently of app/."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def stdlib_manifest(records: list[dict]) -> str:
    lines = sorted(f"{r['content_sha256']} {r['split']}" for r in records)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def instruction_line(i: int, *, source: str = "helpdesk", license: str = "CC-BY-4.0", tags: list[str] | None = None,
                     collected_at: str = "2026-03-01T10:00:00Z", text_: str | None = None) -> dict:
    return {"instruction": text_ or f"How do I do task {i}?", "input": "" if i % 3 else f"context {i}",
            "output": f"Do step {i} then step {i + 1}.",
            "provenance": {"source": source, "source_ref": f"{source}-{i}", "license": license,
                           "collected_at": collected_at, "legal_basis": "contract", "tags": tags or []}}


def ingest(api, ds: dict, lines: list[dict]) -> list[str]:
    body = b"\n".join(orjson.dumps(x) for x in lines) + b"\n"
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON)
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == 0, r.json()
    ids = []
    for ln in lines:
        src, ref = ln["provenance"]["source"], ln["provenance"]["source_ref"]
        page = api.as_("curator").get(f"/v1/datasets/{ds['id']}/examples", params={"source_ref": ref}).json()
        ids += [x["id"] for x in page["items"] if x["provenance"]["source"] == src]
    return ids


def set_status(ids: list[str], status: str) -> None:
    """Reviews are another issue's workflow; tests put examples in the state they need directly."""
    from app.core.db import session_scope
    from app.models.example import Example

    with session_scope() as s:
        s.query(Example).filter(Example.id.in_([uuid.UUID(i) for i in ids])).update(
            {"status": status, "stage": None}, synchronize_session=False)


def approved_dataset(api, n: int = 20, fmt: str = "instruction", **line_kw) -> tuple[dict, list[str]]:
    ds = new_dataset(api, fmt)
    ids = ingest(api, ds, [instruction_line(i, **line_kw) for i in range(n)])
    set_status(ids, "approved")
    return ds, ids


def freeze(api, ds: dict, name: str = "s1", expect: int = 201, **body) -> dict:
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": name, **body})
    assert r.status_code == expect, r.text
    return r.json()


def export_records(api, snap_id: str, role: str = "trainer", split: str = "all") -> tuple[list[dict], object]:
    r = api.as_(role).get(f"/v1/snapshots/{snap_id}/export", params={"format": "pedigree", "split": split})
    assert r.status_code == 200, r.text
    return [json.loads(ln) for ln in r.content.splitlines() if ln.strip()], r


def sql(stmt: str, **params) -> None:
    from app.core.db import session_scope

    with session_scope() as s:
        s.execute(text(stmt), params)


CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
if not CORPORA.exists():
    CORPORA = Path(os.environ.get("PEDIGREE_CORPORA", "../shared/corpora")).resolve()


class Api:
    """A TestClient with one key per role; `api.as_("reviewer").get(...)`."""

    def __init__(self, client, keys: dict[str, str]) -> None:
        self.client = client
        self.keys = keys

    def as_(self, role: str):
        api = self

        class _Bound:
            def request(self, method: str, url: str, **kw):
                headers = {"Authorization": f"Bearer {api.keys[role]}", **kw.pop("headers", {})}
                return api.client.request(method, url, headers=headers, **kw)

            def get(self, url: str, **kw):
                return self.request("GET", url, **kw)

            def post(self, url: str, **kw):
                return self.request("POST", url, **kw)

            def patch(self, url: str, **kw):
                return self.request("PATCH", url, **kw)

            def delete(self, url: str, **kw):
                return self.request("DELETE", url, **kw)

        return _Bound()


def make_keys() -> dict[str, str]:
    from app.core import auth
    from app.core.db import session_scope

    keys = {}
    with session_scope() as s:
        for role in ("admin", "curator", "reviewer", "trainer", "auditor"):
            _, keys[role] = auth.create_key(s, name=f"test-{role}", role=role)
        _, keys["reviewer2"] = auth.create_key(s, name="test-reviewer-2", role="reviewer")
        _, keys["curator2"] = auth.create_key(s, name="test-curator-2", role="curator")
        _, keys["admin2"] = auth.create_key(s, name="test-admin-2", role="admin")
    return keys


def key_id(key: str) -> str:
    from sqlalchemy import select

    from app.core.auth import key_prefix
    from app.core.db import session_scope
    from app.models.auth import ApiKey

    with session_scope() as s:
        return str(s.scalar(select(ApiKey.id).where(ApiKey.prefix == key_prefix(key))))


def reveal_grant(api: Api, dataset_id: str, *, role: str = "admin", purpose: str = "test: check the scrubber",
                 hours: float = 1.0) -> dict:
    """An approved PII reveal grant for `role`'s key on the dataset: asked by admin, approved by admin2
    (four eyes; for role admin2, the other way round)."""
    import datetime as dt

    asker, approver = ("admin2", "admin") if role == "admin2" else ("admin", "admin2")
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat()
    r = api.as_(asker).post("/v1/pii-grants", json={"key_id": key_id(api.keys[role]), "dataset": dataset_id,
                                                    "purpose": purpose, "expires_at": until})
    assert r.status_code == 201, r.text
    r = api.as_(approver).post(f"/v1/pii-grants/{r.json()['id']}/approve")
    assert r.status_code == 200, r.text
    return r.json()


def new_dataset(api: Api, fmt: str = "instruction", **extra) -> dict:
    r = api.as_("curator").post("/v1/datasets", json={"name": f"ds-{uuid.uuid4().hex[:8]}", "format": fmt, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def corpora_file(rel: str) -> Path:
    path = CORPORA / rel
    if not path.exists():
        pytest.skip(f"shared corpora not present ({path}); CI has them")
    return path


def snapshot(api, n: int = 12) -> tuple[dict, list[dict]]:
    ds, _ = approved_dataset(api, n=n)
    # Stratified (no example has a `lang:` tag, so one stratum): exactly round(0.25 * n) validation members
    # on every run. The plain split hashes each example id, and fresh ids left 12 examples with no
    # validation member about one run in thirty (an evaluation asking for membership is then refused).
    snap = freeze(api, ds, validation_fraction=0.25, seed="7", stratify_by="lang")
    recs, _ = export_records(api, snap["id"])
    return snap, recs


def fake_artifact(root: Path, name: str, run_id: str, payload: bytes = b"adapter") -> tuple[str, str]:
    """A small .tar.gz under the artifact root, as the trainer worker uploads it."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for fname, data in (("adapter_config.json", b"{}"), ("adapter_model.safetensors", payload),
                            ("README.md", b"# card")):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = root / name / f"{run_id}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path.resolve().as_uri(), hashlib.sha256(buf.getvalue()).hexdigest()


def complete_body(recs: list[dict], uri: str, sha: str) -> dict:
    train = [r for r in recs if r["split"] == "train"]
    return {"artifact_uri": uri, "artifact_sha256": sha, "metrics": {"train_loss": 1.5, "steps": 3},
            "examples": [{"revision_id": r["revision_id"], "tokens": 10 + i, "epochs": 1} for i, r in enumerate(train)]}


def ingest_for_review(api, ds, n=3, role="curator"):
    tag = uuid.uuid4().hex[:6]  # distinct content per call: exact duplicates skip review
    rows = [{"instruction": f"Explain topic number {i} ({tag}) briefly.", "input": "",
             "output": f"Topic {i} is explained here in one clear and complete sentence."} for i in range(n)]
    r = api.as_(role).post(f"/v1/datasets/{ds['id']}/examples", json=rows)
    assert r.status_code == 201, r.text
    return [it["id"] for it in r.json()["items"]]


def get_example(api, eid):
    r = api.as_("reviewer").get(f"/v1/examples/{eid}")
    assert r.status_code == 200, r.text
    return r.json()


def make_records(n: int = 40, seed: int = 0) -> list[dict]:
    """A mixed-format export: every format, a validation split, one multi-turn chat."""
    from trainer.data import content_sha256

    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            fmt = "chat"
            content = {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"What is {i} plus one?"},
                    {"role": "assistant", "content": f"{i + 1}."},
                    {"role": "user", "content": "And doubled?"},
                    {"role": "assistant", "content": f"{2 * (i + 1)}." + " really" * rng.randrange(4)},
                ]
            }
        elif k == 1:
            fmt = "instruction"
            content = {"instruction": "Reverse the word.", "input": f"word{i}", "output": f"{i}drow"}
        elif k == 2:
            fmt = "completion"
            content = {
                "prompt": f"Count to {i % 9}:",
                "completion": " " + " ".join(str(j) for j in range(i % 9)),
            }
        else:
            fmt = "preference"
            content = {
                "prompt": "Say something kind.",
                "chosen": "You are doing well." * (1 + i % 3),
                "rejected": "No.",
            }
        out.append(
            {
                "revision_id": f"rev-{i:03d}",
                "example_id": f"ex-{i:03d}",
                "split": "validation" if i % 8 == 0 else "train",
                "format": fmt,
                "content": content,
                "content_sha256": content_sha256(content),
            }
        )
    return out
