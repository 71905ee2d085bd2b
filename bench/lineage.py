"""Lineage queries and erasure at scale, on PostgreSQL.

    python -m bench.lineage [--scale 1.0] [--samples 300] [--license-samples 20] [--keep]

Builds, with COPY into a throwaway database migrated to head (the real schema and indexes):
  - E examples (250,000 x scale, min 20,000) of one dataset, one revision each, 8 sources with a skewed
    mix, 6 licenses (CC-BY-NC-4.0 about 5%), a vault entry for one in ten;
  - 100 snapshots (one partition each, as a freeze writes them) of 10,000 examples over a sliding
    window of the pool, so consecutive snapshots overlap heavily, the way re-freezes of a growing
    dataset do;
  - runs: 10 per snapshot (a sweep: 10 model names), each registered as a model version, and one
    lineage row per trained example: runs x 10,000 rows (1,000 runs = 10,000,000 rows at scale 1).
    Indexes and constraints are dropped for the COPY and rebuilt after it from their definitions.
The first 10,000 examples belong to one data subject (metadata subject_id = S-1); they sit in the
first 5 snapshots only, so their erasure reaches exactly 50 model versions.

The dataset belongs to a team workspace (`lineage-team`, priv03) and the model names to it too (priv06).

Measured as an auditor sees them: a non-admin `auditor` key that is a member of that workspace, its
memberships loaded and installed as the session's scope exactly as a Reader route does
(auth.with_memberships + install_scope), so every lookup runs the scoped statements (admin skips them).
Service functions in-process: the exact SQL the API runs for that caller; the erasure through the HTTP
API, by a `curator` member of the workspace:
  1. "which model versions did example X train": the example's workspace check (examples.get), then the
     versions; p50/p99 over random examples                                           (target p99 < 20 ms)
  2. "page 1 of the examples of model version Y filtered by source": p50/p99, with the version's
     workspace check                                                                  (target p99 < 20 ms)
  3. "every model version trained on license L" (CC-BY-NC-4.0, ~5% of examples)       (target < 200 ms)
     as GET /v1/lineage/license/{L} answers it for a member: from the lineage rows of the workspaces'
     examples (the per-version counts a registration writes, model_version_facets, answer for the whole
     installation, so only admin reads them); admin's answer from the counts is timed beside it for
     reference (models_by_license_admin_*; built here for every version at once, timed as facets_s);
     both must name the same versions (everything is in the one workspace)
  4. POST /v1/erasure-requests for subject S-1 (10,000 examples, 50 model versions) end to end,
     through uvicorn, confirm=true; it opens the subject's vault entries for the erasure re-test, so
     they are sealed for real                                                         (target < 5 s)
The EXPLAIN (ANALYZE) plans of the statements behind 1-3 are printed. The last stdout line is one JSON
object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import time
import uuid
from typing import Any

import psycopg

from bench.common import api_server, bench_env, migrate, temp_pg_database

TARGET_LOOKUP_P99_MS = 20.0
TARGET_LICENSE_MS = 200.0
TARGET_ERASURE_S = 5.0

SNAPSHOTS = 100
RUNS_PER_SNAPSHOT = 10
PER_RUN = 10_000
SUBJECT_EXAMPLES = 10_000
SOURCES = [("support-tickets", 30), ("forum", 20), ("docs", 15), ("chat-logs", 12), ("wiki", 10),
           ("synthetic", 8), ("partner-feed", 4), ("legacy-crm", 1)]
LICENSES = [("CC-BY-4.0", 40), ("CC-BY-SA-4.0", 25), ("MIT", 15), ("proprietary", 10), ("CC-BY-NC-4.0", 5),
            ("CC0-1.0", 5)]
NC = "CC-BY-NC-4.0"


def log(msg: str) -> None:
    print(msg, flush=True)


def _pick(rng: random.Random, weighted: list[tuple[str, int]], n: int) -> list[str]:
    names, weights = zip(*weighted, strict=True)
    return rng.choices(names, weights=weights, k=n)


def _copy(cur: psycopg.Cursor, table: str, cols: list[str], lines: list[str] | Any) -> None:
    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
        buf = io.StringIO()
        for n, ln in enumerate(lines, 1):
            buf.write(ln)
            if n % 50_000 == 0:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())


def _ids(n: int) -> list[uuid.UUID]:
    from app.core.ids import new_ids

    return new_ids(n)


def _strip_table(cur: psycopg.Cursor, table: str) -> list[str]:
    """Drop a table's indexes and constraints (except NOT NULL) and return the statements that rebuild
    them, from the catalog: the rebuilt table is exactly what the migrations made."""
    rebuild: list[str] = []
    cons = cur.execute("SELECT conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
                       "WHERE conrelid = %s::regclass ORDER BY contype = 'f', conname", (table,)).fetchall()
    owned = set()
    for name, definition, ctype in cons:
        rebuild.append(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
        if ctype in ("p", "u"):
            owned.add(name)
    idx = cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()
    for name, definition in idx:
        if name not in owned:
            rebuild.append(definition)
    for name, _, ctype in sorted(cons, key=lambda c: c[2] != "f"):
        cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    for name, _ in idx:
        if name not in owned:
            cur.execute(f"DROP INDEX {name}")
    # Foreign keys last (they need the primary keys they reference); indexes before them.
    return sorted(rebuild, key=lambda s: ("FOREIGN KEY" in s, "PRIMARY KEY" not in s))


def build(dsn: str, *, scale: float, per_run: int = PER_RUN, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    n_examples = max(2 * per_run, int(250_000 * scale))
    n_runs = max(50, int(SNAPSHOTS * RUNS_PER_SNAPSHOT * scale))
    n_snaps = max(5, n_runs // RUNS_PER_SNAPSHOT)
    per_run = min(per_run, n_examples)
    subject = min(SUBJECT_EXAMPLES, per_run)
    step = max(1, (n_examples - per_run) // max(1, n_snaps - 1))
    t0 = time.perf_counter()
    now = "2026-11-30 00:00:00+00"
    ds_id, ws_id = uuid.uuid4(), uuid.uuid4()
    ex_ids = _ids(n_examples)
    rev_ids = _ids(n_examples)
    sources = _pick(rng, SOURCES, n_examples)
    licenses = _pick(rng, LICENSES, n_examples)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute("SET max_parallel_maintenance_workers = 2")
        # The dataset in a team workspace (priv03), not `default`: the auditor's key below is a member of
        # it, so the lookups run the scoped statements a real auditor's requests run.
        cur.execute("INSERT INTO workspaces (id, name, created_by, created_at) VALUES (%s, 'lineage-team', 'bench', "
                    "now())", (ws_id,))
        cur.execute("INSERT INTO datasets (id, name, format, description, created_by, review_policy, pii_policy, "
                    "dedup_policy, quality_rules, is_eval_set, workspace_id, created_at) VALUES (%s, 'bench-lineage', "
                    "'instruction', '', 'bench', '{}', '{}', '{}', '{}', false, %s, now())", (ds_id, ws_id))
        cur.execute("SET CONSTRAINTS ALL DEFERRED")
        _copy(cur, "examples", ["id", "dataset_id", "status", "current_revision_id", "source", "source_ref",
                                "collected_at", "license", "legal_basis", "ingested_by", "metadata", "tags",
                                "updated_at", "created_at"],
              (f"{ex_ids[i]}\t{ds_id}\tapproved\t{rev_ids[i]}\t{sources[i]}\tref-{i}\t{now}\t{licenses[i]}\t"
               f"contract\tbench\t"
               + ('{"subject_id": "S-1"}' if i < subject else f'{{"subject_id": "S-{i % 50_000 + 2}"}}')
               + ("\t[\"math\"]" if i % 7 == 0 else "\t[]") + f"\t{now}\t{now}\n" for i in range(n_examples)))
        _copy(cur, "example_revisions", ["id", "example_id", "seq", "content", "content_sha256", "reason", "author",
                                         "created_at"],
              (f"{rev_ids[i]}\t{ex_ids[i]}\t0\t{{\"instruction\": \"q{i}\", \"input\": \"\", \"output\": \"a{i}\"}}\t"
               f"{uuid.UUID(int=i).hex}{uuid.UUID(int=i).hex}\tingest\tbench\t{now}\n" for i in range(n_examples)))
        vault = [i for i in range(n_examples) if i % 10 == 0]
        # Sealed for real with the configured key, over the same content as the revision: the erasure's
        # re-test capture (app/lineage/retest.py) opens the subject's entries before erasing them, and
        # an entry that fails authentication fails the erasure.
        from app.pii import service as pii

        ring = pii.key_ring()

        def vault_rows():
            for i in vault:
                content = f'{{"instruction": "q{i}", "input": "", "output": "a{i}"}}'
                sealed = ring.seal(content, aad=pii._aad(ex_ids[i], rev_ids[i]))
                yield f"{uuid.uuid4()}\t{ex_ids[i]}\t{rev_ids[i]}\t{sealed.key_id}\t\\\\x{sealed.blob.hex()}\t{now}\n"

        _copy(cur, "pii_vault", ["id", "example_id", "revision_id", "key_id", "ciphertext", "created_at"],
              vault_rows())
        conn.commit()
        log(f"examples: {n_examples:,} with revisions and {len(vault):,} vault entries "
            f"({time.perf_counter() - t0:.1f}s)")

        # Snapshots: one partition per freeze, as app/snapshots writes them.
        snap_ids = _ids(n_snaps)
        windows = [(k * step, k * step + per_run) for k in range(n_snaps)]
        for k, sid in enumerate(snap_ids):
            a, b = windows[k]
            cur.execute("INSERT INTO snapshots (id, dataset_id, name, format, manifest_sha256, split_manifests, "
                        "filter, validation_fraction, seed, member_count, counts, stats, created_by, contains_erased, "
                        "created_at) VALUES (%s, %s, %s, 'instruction', %s, '{}', '{}', 0, 'bench', %s, '{}', '{}', "
                        "'bench', false, now())", (sid, ds_id, f"s{k:03d}", uuid.uuid4().hex * 2, b - a))
            part = f"snapshot_parts.m_{sid.hex}"
            cur.execute(f"CREATE TABLE {part} (LIKE snapshot_members INCLUDING DEFAULTS, "
                        f"CONSTRAINT ck_m_{sid.hex} CHECK (snapshot_id = '{sid}'))")
            _copy(cur, part, ["snapshot_id", "example_id", "revision_id", "split", "content_sha256"],
                  (f"{sid}\t{ex_ids[i]}\t{rev_ids[i]}\ttrain\t{'0' * 64}\n" for i in range(a, b)))
            cur.execute(f"ALTER TABLE {part} ADD CONSTRAINT pk_m_{sid.hex} PRIMARY KEY (snapshot_id, example_id)")
            cur.execute(f"CREATE INDEX ix_m_{sid.hex} ON {part} (example_id)")
            cur.execute(f"ALTER TABLE snapshot_members ATTACH PARTITION {part} FOR VALUES IN ('{sid}')")
        conn.commit()
        log(f"snapshots: {n_snaps} x {per_run:,} members ({time.perf_counter() - t0:.1f}s)")

        names = [f"assistant-{j}" for j in range(RUNS_PER_SNAPSHOT)]
        for nm in names:
            # A name belongs to the workspace that trains under it (priv06), as the registry reserves it.
            cur.execute("INSERT INTO registered_models (name, latest_version, workspace_id, created_at) "
                        "VALUES (%s, %s, %s, now())", (nm, n_runs // RUNS_PER_SNAPSHOT, ws_id))
        run_ids, mv_ids = _ids(n_runs), _ids(n_runs)
        runs = []
        for r in range(n_runs):
            k = min(r // RUNS_PER_SNAPSHOT, n_snaps - 1)
            runs.append((run_ids[r], mv_ids[r], k, names[r % RUNS_PER_SNAPSHOT], r // RUNS_PER_SNAPSHOT + 1,
                         1 + r % 3))
        _copy(cur, "training_runs", ["id", "snapshot_id", "expected_manifest_sha256", "base_model", "method",
                                     "hyperparameters", "model_name", "metadata", "status", "metrics", "event_count",
                                     "created_by", "created_at", "started_at", "finished_at"],
              (f"{rid}\t{snap_ids[k]}\t{'0' * 64}\tQwen/Qwen2.5-0.5B\tlora\t{{\"epochs\": {ep}, \"lora_r\": 16}}\t"
               f"{nm}\t{{}}\tsucceeded\t{{}}\t0\tbench\t{now}\t{now}\t{now}\n" for rid, _, k, nm, v, ep in runs))
        _copy(cur, "model_versions", ["id", "name", "version", "run_id", "artifact_uri", "artifact_sha256", "status",
                                      "created_by", "created_at"],
              (f"{mv}\t{nm}\t{v}\t{rid}\tfile:///adapters/{nm}/{v}.tar.gz\t{'ab' * 32}\tcandidate\tbench\t{now}\n"
               for rid, mv, k, nm, v, ep in runs))
        # production serves each name's latest version; staging of assistant-3 still serves a version
        # trained on the subject's snapshots, so the erasure must report it loudly.
        latest = {nm: (mv, v) for rid, mv, k, nm, v, ep in runs}
        aliases = [(nm, "production", v, mv) for nm, (mv, v) in latest.items()]
        aliases.append(("assistant-3", "staging", 1, runs[3][1]))
        for nm, alias, v, mv in aliases:
            cur.execute("INSERT INTO model_aliases (name, alias, version, model_version_id, updated_at, updated_by) "
                        "VALUES (%s, %s, %s, %s, now(), 'bench')", (nm, alias, v, mv))
            cur.execute("UPDATE model_versions SET status = 'deployed' WHERE id = %s", (mv,))
        conn.commit()

        rebuild = _strip_table(cur, "lineage")
        conn.commit()
        t1 = time.perf_counter()
        ex_txt = [f"{rev_ids[i]}\t{ex_ids[i]}\t" for i in range(n_examples)]
        tokens = [str(rng.randint(40, 2000)) for _ in range(n_examples)]

        def rows():
            for rid, mv, k, nm, v, ep in runs:
                a, b = windows[k]
                head, tail = f"{rid}\t{mv}\t", f"\t{ep}\n"
                for i in range(a, b):
                    yield head + ex_txt[i] + tokens[i] + tail

        _copy(cur, "lineage", ["run_id", "model_version_id", "revision_id", "example_id", "tokens", "epochs"], rows())
        conn.commit()
        copy_s = time.perf_counter() - t1
        n_lineage = n_runs * per_run
        log(f"lineage: {n_lineage:,} rows by COPY in {copy_s:.1f}s; rebuilding {len(rebuild)} indexes/constraints")
        t2 = time.perf_counter()
        for stmt in rebuild:
            cur.execute(stmt)
        conn.commit()
        index_s = time.perf_counter() - t2
    # What each registration does for its own version right after its commit (app/lineage/facets.py),
    # here for all of them at once.
    from sqlalchemy import func, select

    from app.core.db import session_scope
    from app.lineage import facets
    from app.models.lineage import ModelVersionFacet

    t3 = time.perf_counter()
    with session_scope() as s:
        facets.refresh(s, list(mv_ids))
        facet_rows = s.scalar(select(func.count()).select_from(ModelVersionFacet))
    facets_s = time.perf_counter() - t3
    log(f"facets: {facet_rows:,} rows for {n_runs} versions in {facets_s:.1f}s")
    # VACUUM sets the visibility map (index-only scans), as autovacuum would after a bulk load.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    build_s = time.perf_counter() - t0
    log(f"indexes in {index_s:.1f}s; build total {build_s:.1f}s")
    return {"dataset_id": str(ds_id), "workspace_id": str(ws_id), "examples": n_examples, "runs": n_runs, "snapshots": n_snaps,
            "lineage_rows": n_lineage, "per_run": per_run, "subject_examples": subject,
            "subject_model_versions": sum(1 for r in runs if windows[r[2]][0] < subject),
            "copy_s": round(copy_s, 1), "index_s": round(index_s, 1), "facets_s": round(facets_s, 1),
            "build_s": round(build_s, 1),
            "ex_ids": ex_ids, "models": [(nm, v) for _, _, _, nm, v, _ in runs]}


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Capture:
    """Records the statements a call issues, to EXPLAIN exactly those."""

    def __init__(self, engine) -> None:
        self.engine, self.stmts = engine, []

    def __enter__(self):
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def _on(self, conn, cursor, statement, params, context, executemany) -> None:
        self.stmts.append((statement, params))

    def __exit__(self, *exc) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._on)


def explain(engine, fn, title: str, must: str = "lineage", *, scope: Any = None) -> list[str]:
    from app.core import auth
    from app.core.db import session_scope

    with Capture(engine) as cap, session_scope() as s:
        if scope is not None:
            auth.install_scope(s, scope, auth.READERS)
        fn(s)
    out = []
    for stmt, params in cap.stmts:
        if must not in stmt or not stmt.lstrip().upper().startswith("SELECT"):
            continue
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, COSTS OFF, BUFFERS OFF, TIMING OFF, SUMMARY ON) " + stmt, params)
                plan = "\n".join(r[0] for r in cur.fetchall())
            raw.rollback()
        out.append(plan)
        short = "\n".join(ln if len(ln) <= 240 else ln[:240] + " ..." for ln in f"{stmt}\n{plan}".splitlines())
        log(f"\n--- EXPLAIN: {title}\n{short}")
    return out


def timed(fn, samples: list[Any], warm: int = 10, *, scope: Any = None) -> list[float]:
    """Wall time of fn(session, x) per sample, each in its own transaction on one held connection (as a
    pooled API worker runs them; the pool's checkout ping is not the query's cost). `scope`: the actor
    whose workspace scope the session carries, as a Reader route installs it."""
    import gc

    from sqlalchemy.orm import Session

    from app.core import auth
    from app.core.db import get_engine

    with get_engine().connect() as conn:
        s = Session(bind=conn, join_transaction_mode="rollback_only")
        if scope is not None:
            auth.install_scope(s, scope, auth.READERS)
        for x in samples[:warm]:
            fn(s, x)
            s.rollback()
        ms = []
        gc.disable()  # a collector pause is the interpreter's, not the database's
        try:
            for x in samples:
                t = time.perf_counter()
                fn(s, x)
                ms.append((time.perf_counter() - t) * 1000)
                s.rollback()
        finally:
            gc.enable()
            s.close()
    return ms


def run(args: argparse.Namespace) -> dict[str, Any]:
    with temp_pg_database("pedigree_bench_lineage") as url:
        env = bench_env(url, redis_url=None)
        os.environ.update(env)
        from app.core.config import reset_settings

        reset_settings()
        migrate(env)
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        info = build(dsn, scale=args.scale, per_run=args.per_run)
        rng = random.Random(11)

        from sqlalchemy import select

        from app.core import auth
        from app.core.db import get_engine, session_scope
        from app.datasets import service as datasets
        from app.examples import service as examples
        from app.lineage import service
        from app.models.example import Example

        engine = get_engine()
        # The auditor who asks the questions: a member of the dataset's workspace, not admin (admin sees
        # every workspace and skips the scoped statements). The erasure is a curator's, of that workspace.
        ws_id = uuid.UUID(info["workspace_id"])
        with session_scope() as s:
            row, auditor_key = auth.create_key(s, name="bench-auditor", role="auditor", workspace_id=ws_id)
            _, curator_key = auth.create_key(s, name="bench-curator", role="curator", workspace_id=ws_id)
            auditor = auth.with_memberships(s, auth.Actor(key_id=row.id, name=row.name, role="auditor"))
        visible = [w for w, _ in auditor.memberships]
        assert visible == [ws_id], auditor.memberships
        ex_ids = info.pop("ex_ids")
        models = info.pop("models")
        # Examples the runs trained (every one of them did: the windows cover the pool).
        ex_sample = [ex_ids[rng.randrange(len(ex_ids))] for _ in range(args.samples)]
        page_sample = [(rng.choice(models), rng.choice([s for s, _ in SOURCES[:5]])) for _ in range(args.samples)]
        rare_sample = [(rng.choice(models), "legacy-crm") for _ in range(max(20, args.samples // 10))]

        def which_versions(s, e):
            examples.get(s, e)  # the route's workspace check: the example's dataset must be the caller's
            return service.model_versions_of_example(s, e)

        def page(s, mp):
            return service.model_examples(s, name=mp[0][0], version=mp[0][1], source=mp[1], limit=50, actor=auditor)

        # What GET /v1/lineage/license/{license} answers about model versions for a scoped caller: the
        # per-version counts answer for the whole installation, so a member's versions come from the
        # lineage rows of its workspaces' examples (app/lineage/service.py, `_reverse`).
        def license_versions(s, lic):
            cond = (Example.license == lic) & Example.dataset_id.in_(datasets.visible_dataset_ids(s))
            return service.model_versions_trained_on(s, cond)

        q1 = timed(which_versions, ex_sample, scope=auditor)
        q2 = timed(page, page_sample, scope=auditor)
        q2_rare = timed(page, rare_sample, warm=2, scope=auditor)
        q3 = timed(lambda s, lic: license_versions(s, lic), [NC] * args.license_samples, warm=1, scope=auditor)
        # Admin's answer to the same question, from the per-version counts (the figure before workspaces).
        q3_admin = timed(lambda s, lic: service.model_versions_with(s, "license", lic), [NC] * 100, warm=3)
        with service_session() as s:
            auth.install_scope(s, auditor, auth.READERS)
            nc_versions = len(license_versions(s, NC))
            ex_per_version = len(which_versions(s, ex_sample[0]))
        with service_session() as s:
            nc_versions_admin = len(service.model_versions_with(s, "license", NC))
        log(f"which-models p50 {_pct(q1, 50):.2f} ms p99 {_pct(q1, 99):.2f} ms ({ex_per_version} versions for a "
            f"sample example); model page by source p50 {_pct(q2, 50):.2f} p99 {_pct(q2, 99):.2f} ms "
            f"(rare source p99 {_pct(q2_rare, 99):.2f}); license {NC}: {nc_versions} versions, "
            f"p50 {_pct(q3, 50):.1f} max {max(q3):.1f} ms (admin, from the counts: {nc_versions_admin} versions, "
            f"p50 {_pct(q3_admin, 50):.1f} max {max(q3_admin):.1f} ms)")

        plans = {
            "which_model_versions": explain(engine, lambda s: which_versions(s, ex_sample[0]),
                                            "which model versions did example X train", scope=auditor),
            "model_page_by_source": explain(engine, lambda s: page(s, page_sample[0]),
                                            f"page 1 of {page_sample[0][0]} examples, source={page_sample[0][1]}",
                                            scope=auditor),
            "models_by_license": explain(engine, lambda s: license_versions(s, NC),
                                         f"every model version trained on {NC} (auditor of the workspace)",
                                         scope=auditor),
            # Admin's answer from the per-version counts, for reference.
            "models_by_license_admin": explain(engine, lambda s: service.model_versions_with(s, "license", NC),
                                               f"(reference, admin) every model version trained on {NC}",
                                               must="model_version"),
        }

        # Erasure, end to end through the API.
        import httpx

        body = {"selector": {"metadata": {"subject_id": "S-1"}, "dataset_id": info["dataset_id"]},
                "reason": "GDPR Art. 17 request (bench)", "confirm": True}
        with api_server(env) as (api, _proc), httpx.Client(base_url=api, timeout=120,
                                                          headers={"Authorization": f"Bearer {curator_key}"}) as http:
            t = time.perf_counter()
            r = http.post("/v1/erasure-requests", json={**body, "dry_run": True})
            dry_s = time.perf_counter() - t
            assert r.status_code == 201, r.text
            dry_timings = r.json().get("timings_s")
            t = time.perf_counter()
            r = http.post("/v1/erasure-requests", json=body)
            erasure_s = time.perf_counter() - t
            assert r.status_code == 201, r.text
            rep = r.json()
            t = time.perf_counter()
            again = http.post("/v1/erasure-requests", json=body).json()
            replay_s = time.perf_counter() - t
            # HTTP latency of the two lookups, for reference (the targets are on the queries above).
            http_q1 = []
            as_auditor = {"Authorization": f"Bearer {auditor_key}"}
            for e in ex_sample[:100]:
                t = time.perf_counter()
                r = http.get(f"/v1/lineage/examples/{e}", params={"content": "false"}, headers=as_auditor)
                http_q1.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
        with service_session() as s:
            tainted = s.execute(select(service.tr.model_versions.c.status)).scalars().all().count("tainted")
            erased = s.scalar(select(Example.id).where(Example.status == "erased").limit(1)) is not None
        log(f"erasure: {rep['affected']['examples']:,} examples, {len(rep['affected']['model_versions'])} model "
            f"versions, {len(rep['affected']['snapshots'])} snapshots, aliases "
            f"{[a['name'] + '@' + a['alias'] for a in rep['affected']['aliases']]} in {erasure_s:.2f}s "
            f"(dry run {dry_s:.2f}s, replay {replay_s:.2f}s)")
        ok_erasure = (rep["affected"]["examples"] == info["subject_examples"]
                      and len(rep["affected"]["model_versions"]) == info["subject_model_versions"]
                      and tainted == info["subject_model_versions"] and erased and again["id"] == rep["id"])
        if args.keep:
            log(f"(--keep: database left at {url}; Ctrl-C or SIGTERM drops it)")
            import signal

            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
            try:
                time.sleep(10**6)
            except KeyboardInterrupt:
                pass
        from app.core.db import _engine_for

        engine.dispose()
        _engine_for.cache_clear()

    figures = {
        "which_model_versions_p50_ms": round(_pct(q1, 50), 2), "which_model_versions_p99_ms": round(_pct(q1, 99), 2),
        "model_page_by_source_p50_ms": round(_pct(q2, 50), 2), "model_page_by_source_p99_ms": round(_pct(q2, 99), 2),
        "model_page_rare_source_p99_ms": round(_pct(q2_rare, 99), 2),
        "models_by_license_p50_ms": round(_pct(q3, 50), 1), "models_by_license_max_ms": round(max(q3), 1),
        "models_by_license_versions": nc_versions,
        "models_by_license_admin_p50_ms": round(_pct(q3_admin, 50), 1),
        "models_by_license_admin_max_ms": round(max(q3_admin), 1),
        "models_by_license_admin_versions": nc_versions_admin,
        "erasure_s": round(erasure_s, 2), "erasure_dry_run_s": round(dry_s, 2), "erasure_replay_s": round(replay_s, 2),
        "erasure_examples": rep["affected"]["examples"],
        "erasure_model_versions": len(rep["affected"]["model_versions"]),
        "erasure_snapshots": len(rep["affected"]["snapshots"]),
        "erasure_aliases": [f"{a['name']}@{a['alias']}" for a in rep["affected"]["aliases"]],
        "erasure_checks_ok": ok_erasure,
        "erasure_timings_s": rep.get("timings_s"), "erasure_dry_run_timings_s": dry_timings,
        "http_example_lineage_p50_ms": round(_pct(http_q1, 50), 1),
        "http_example_lineage_p99_ms": round(_pct(http_q1, 99), 1),
    }
    targets = {"which_model_versions_p99_ms": TARGET_LOOKUP_P99_MS, "model_page_by_source_p99_ms": TARGET_LOOKUP_P99_MS,
               "models_by_license_max_ms": TARGET_LICENSE_MS, "erasure_s": TARGET_ERASURE_S}
    passed = (figures["which_model_versions_p99_ms"] < TARGET_LOOKUP_P99_MS
              and figures["model_page_by_source_p99_ms"] < TARGET_LOOKUP_P99_MS
              and figures["models_by_license_max_ms"] < TARGET_LICENSE_MS
              and figures["erasure_s"] < TARGET_ERASURE_S and ok_erasure and nc_versions == nc_versions_admin)
    return {"bench": "lineage", "scale": args.scale, "host": socket.gethostname(), "cpus": os.cpu_count(),
            # Latencies on a shared box move with what else runs: the load average says how busy it was.
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "data": info, "figures": figures, "targets": targets,
            "plans_indexes": sorted({ln.strip() for p in plans.values() for plan in p for ln in plan.splitlines()
                                     if "Index" in ln and " on " in ln}),
            "pass": passed}


def service_session():
    from app.core.db import session_scope

    return session_scope()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="1.0: 1,000 runs x 10,000 = 10,000,000 lineage rows over 250,000 examples; "
                         "0.05 is a quick run (50 runs, 500,000 rows)")
    ap.add_argument("--samples", type=int, default=300, help="lookups per latency figure")
    ap.add_argument("--per-run", type=int, default=PER_RUN,
                    help="examples each run trained (10,000); smaller only for the smoke test (tests/bench)")
    ap.add_argument("--license-samples", type=int, default=20,
                    help="repetitions of the auditor's license question (it reads lineage rows: slower than a lookup)")
    ap.add_argument("--keep", action="store_true", help="keep the database until Ctrl-C (to poke at it)")
    args = ap.parse_args()
    result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
