"""Registering a succeeded run on PostgreSQL: the completion report parsed, the artifact hashed, the
model version registered and one lineage row per trained revision written, in one transaction.

    python -m bench.registration [--n 1000000]

Builds a snapshot of n members directly (generate_series into snapshot_members, with time-ordered ids
as UUIDv7 gives them: revisions were created in about the order of their examples), a running run, a
small artifact, then times `POST /complete`'s work in two parts: parsing the JSON body with the
request schema (what FastAPI does), and the service call (INSERT ... SELECT over unnest() joined to
the snapshot's members). Checks afterwards that exactly n lineage rows exist and that every example id
came from the membership. The last stdout line is one JSON object with the figures and "pass".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from bench.common import temp_pg_database

# A million-example run registers (version + lineage) within a minute.
TARGET_ROWS_PER_S = 16_667


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="trained revisions reported")
    args = ap.parse_args()
    n = args.n
    with temp_pg_database("pedigree_bench_reg") as url, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(PEDIGREE_DATABASE_URL=url.replace("postgresql://", "postgresql+psycopg://"),
                          PEDIGREE_SECRET_KEY="bench-secret-0123456789abcdef", PEDIGREE_EMBEDDED="true",
                          PEDIGREE_ARTIFACT_ROOT=str(Path(tmp) / "artifacts"))
        os.environ.pop("PEDIGREE_REDIS_URL", None)
        from app.core.config import reset_settings

        reset_settings()
        from sqlalchemy import text

        from app.core.auth import Actor
        from app.core.db import session_scope
        from app.core.migrate import upgrade_head
        from app.datasets import service as datasets
        from app.datasets.schemas import DatasetCreate
        from app.models.snapshot import Snapshot
        from app.models.training import TrainingRun
        from app.training import service
        from app.training.schemas import RunComplete

        upgrade_head()
        actor = Actor(key_id=uuid.UUID(int=7), name="bench", role="admin", is_human=False)
        with session_scope() as s:
            ds = datasets.create(s, data=DatasetCreate(name="bench", format="instruction"), actor=actor)
            snap = Snapshot(dataset_id=ds.id, name="s", format="instruction", manifest_sha256="0" * 64,
                            split_manifests={}, filter={}, validation_fraction=0.0, seed="0", stratify_by=None,
                            member_count=n, counts={"train": n, "validation": 0}, stats={}, created_by="bench")
            s.add(snap)
            s.flush()
            sid = snap.id
        t0 = time.time()
        with session_scope() as s:
            s.execute(text("INSERT INTO snapshot_members (snapshot_id, example_id, revision_id, split, content_sha256) "
                           "SELECT :sid, ('01a20000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, "
                           "('01a20001-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'train', "
                           "md5(g::text) || md5(g::text) FROM generate_series(1, :n) g"), {"sid": str(sid), "n": n})
            s.execute(text("ANALYZE snapshot_members"))
            revs = [str(r) for (r,) in s.execute(text("SELECT revision_id FROM snapshot_members WHERE snapshot_id = :sid"),
                                                 {"sid": str(sid)})]
            run = TrainingRun(snapshot_id=sid, expected_manifest_sha256="0" * 64, base_model="bench/none",
                              method="lora", hyperparameters={}, model_name="bench-model", meta={}, status="running",
                              created_by="bench", metrics={}, event_count=0)
            s.add(run)
            s.flush()
            rid = run.id
        setup_s = time.time() - t0
        art_dir = Path(tmp) / "artifacts" / "bench-model"
        art_dir.mkdir(parents=True)
        art = art_dir / f"{rid}.tar.gz"
        art.write_bytes(os.urandom(8 << 20))  # an adapter of a ~0.5B model's size order (r=16: tens of MB)
        import hashlib

        sha = hashlib.sha256(art.read_bytes()).hexdigest()
        body = orjson.dumps({"artifact_uri": art.resolve().as_uri(), "artifact_sha256": sha, "metrics": {"steps": 1},
                             "examples": [{"revision_id": r, "tokens": 100 + i % 900, "epochs": 1}
                                          for i, r in enumerate(revs)]})
        t1 = time.time()
        data = RunComplete.model_validate_json(body)
        parse_s = time.time() - t1
        t2 = time.time()
        with session_scope() as s:
            _, mv = service.complete(s, run_id=str(rid), data=data, actor=actor)
            version = mv.version
        write_s = time.time() - t2
        with session_scope() as s:
            rows = s.execute(text("SELECT count(*) FROM lineage WHERE run_id = :r"), {"r": str(rid)}).scalar_one()
            joined = s.execute(text(
                "SELECT count(*) FROM lineage l JOIN snapshot_members m ON m.snapshot_id = :sid "
                "AND m.example_id = l.example_id AND m.revision_id = l.revision_id WHERE l.run_id = :r"),
                {"sid": str(sid), "r": str(rid)}).scalar_one()
    rate = n / write_s if write_s else None
    ok = rows == n and joined == n and version == 1 and rate is not None and rate >= TARGET_ROWS_PER_S
    print(f"{n} revisions: parse {parse_s:.2f}s, register+lineage {write_s:.2f}s ({rate:,.0f} rows/s); "
          f"setup {setup_s:.1f}s; body {len(body) / 1e6:.1f} MB")
    print(json.dumps({
        "bench": "registration", "machine": platform.node(), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg()[0], "n": n, "body_mb": round(len(body) / 1e6, 1),
        "parse_s": round(parse_s, 3), "register_and_lineage_s": round(write_s, 3),
        "lineage_rows_per_s": round(rate) if rate else None, "lineage_rows": rows, "rows_from_membership": joined,
        "targets": {"lineage_rows_per_s": TARGET_ROWS_PER_S}, "pass": ok,
    }))


if __name__ == "__main__":
    main()
