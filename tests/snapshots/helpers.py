from __future__ import annotations

import hashlib
import json
import uuid

import orjson
from sqlalchemy import text

from tests.conftest import new_dataset

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
