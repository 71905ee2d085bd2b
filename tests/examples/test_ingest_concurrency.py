"""Concurrent imports and truthful import batches, on real PostgreSQL.

Concurrency goes through the ASGI app with real threads behind it (the import's writes run in the
threadpool, each in its own database transaction), so the races are the database's, not simulated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid

import httpx
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, update

from tests.factories import new_dataset
from tests.support import redis_db_url

NDJSON = {"Content-Type": "application/x-ndjson"}


def _line(i: int) -> bytes:
    return orjson.dumps({"instruction": f"question {i}", "output": f"answer {i}",
                         "provenance": {"source": "race", "source_ref": f"ref-{i}"}})


def _body(refs) -> bytes:
    return b"\n".join(_line(i) for i in refs) + b"\n"


def _chunked(body: bytes, size: int = 4096):
    # Streamed in pieces, as a real client sends a file: the import commits batch by batch while
    # the other imports do the same, so their transactions interleave.
    async def gen():
        for i in range(0, len(body), size):
            yield body[i:i + size]
            await asyncio.sleep(0)
    return gen()


async def _gather(app, key: str, requests: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return await asyncio.gather(*(client.request(m, url, **kw) for m, url, kw in requests))


@pytest.fixture
def broker(pg_api, redis_url, monkeypatch):
    """Tasks go to a Redis queue of this file's own (no worker): the pipeline does not run inside the
    importing threads, as in production, so the races measured are the imports' own."""
    import redis

    from app.core import jobs
    from app.core.config import reset_settings

    url = redis_db_url("plain")
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("PEDIGREE_REDIS_URL", url)
    monkeypatch.setenv("PEDIGREE_EMBEDDED", "false")
    reset_settings()
    jobs.celery_client.cache_clear()
    yield
    redis.Redis.from_url(url).flushdb()
    monkeypatch.delenv("PEDIGREE_REDIS_URL", raising=False)
    reset_settings()


@pytest.fixture
def small_batches(monkeypatch):
    # Many write transactions per import, so concurrent imports interleave inside one body.
    monkeypatch.setenv("PEDIGREE_INGEST_BATCH_SIZE", "50")
    from app.core.config import reset_settings

    reset_settings()
    yield
    monkeypatch.delenv("PEDIGREE_INGEST_BATCH_SIZE")
    reset_settings()


def _stored_refs(dataset_id: str) -> tuple[int, int]:
    from app.core.db import session_scope
    from app.models.example import Example

    with session_scope() as s:
        q = select(func.count(), func.count(func.distinct(Example.source_ref))).where(
            Example.dataset_id == uuid.UUID(dataset_id))
        total, distinct = s.execute(q).one()
    return total, distinct


def test_twenty_concurrent_imports_of_overlapping_refs_all_succeed(broker, pg_api, small_batches):
    """Before: 19 of 20 answered 500 (deadlocks, unique-index races) and refs were lost."""
    from app.main import create_app

    ds = new_dataset(pg_api)
    importers, width, step = 20, 200, 100  # importer i sends refs [100 i, 100 i + 200): each ref in two bodies
    # Each file lists its refs in its own order (as exports from different tools do): without one
    # lock order, two batches sharing refs each wait on the other.
    orders = [random.Random(i).sample(range(i * step, i * step + width), width) for i in range(importers)]
    bodies = [_body(o) for o in orders]
    url = f"/v1/datasets/{ds['id']}/examples:import"
    rs = asyncio.run(_gather(create_app(), pg_api.keys["curator"],
                             [("POST", url, {"content": _chunked(b), "headers": NDJSON}) for b in bodies]))
    assert [r.status_code for r in rs] == [200] * importers, [r.text[:300] for r in rs if r.status_code != 200]
    out = [r.json() for r in rs]
    assert all(o["rejected"] == 0 for o in out), [o["errors"][:3] for o in out if o["rejected"]]
    distinct_refs = (importers - 1) * step + width
    assert sum(o["accepted"] + o["unchanged"] for o in out) == importers * width
    assert sum(o["accepted"] for o in out) == distinct_refs
    assert _stored_refs(ds["id"]) == (distinct_refs, distinct_refs)
    # Each batch row agrees with its response.
    for o in out:
        b = pg_api.as_("auditor").get(f"/v1/ingest-batches/{o['batch_id']}").json()
        assert (b["status"], b["accepted"], b["unchanged"]) == ("completed", o["accepted"], o["unchanged"])
    assert pg_api.as_("auditor").get("/v1/audit/verify").json()["ok"]


def test_concurrent_creations_of_one_dataset_name_are_one_201_and_409s(broker, pg_api):
    """Before: 1 x 201 and 4 x 500."""
    from app.main import create_app

    body = {"name": "racing-name", "format": "instruction"}
    rs = asyncio.run(_gather(create_app(), pg_api.keys["curator"], [("POST", "/v1/datasets", {"json": body})] * 5))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201, 409, 409, 409, 409], [r.text for r in rs]
    assert {r.json()["error"]["code"] for r in rs if r.status_code == 409} == {"name_taken"}


def test_concurrent_snapshots_of_one_name_are_one_201_and_409s(pg_api):
    """Before: the loser of the same-name race raised PendingRollbackError (500). Embedded tasks here:
    the pipeline scrubs the examples in-process, so they are selectable (pii_pending is excluded)."""
    from app.main import create_app

    ds = new_dataset(pg_api)
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=_body(range(20)),
                                   headers=NDJSON)
    assert r.status_code == 200, r.text
    body = {"dataset_id": ds["id"], "name": "v1", "filter": {"statuses": ["pending_review"]}}
    rs = asyncio.run(_gather(create_app(), pg_api.keys["curator"], [("POST", "/v1/snapshots", {"json": body})] * 5))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201, 409, 409, 409, 409], [r.text[:300] for r in rs]
    assert {r.json()["error"]["code"] for r in rs if r.status_code == 409} == {"name_taken"}


def test_a_deadlock_is_retried_not_a_500(broker, pg_api, monkeypatch):
    from app.examples import ingest

    real, calls = ingest.store, {"n": 0}

    def deadlocking(session, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sa_exc.OperationalError("INSERT", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
        return real(session, **kw)

    monkeypatch.setattr(ingest, "store", deadlocking)
    ds = new_dataset(pg_api)
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=_body(range(10)),
                                   headers=NDJSON)
    assert r.status_code == 200 and r.json()["accepted"] == 10, r.text
    assert calls["n"] == 2 and _stored_refs(ds["id"]) == (10, 10)


def test_a_line_the_database_refuses_fails_alone(broker, pg_api, monkeypatch):
    """Any error of one line (here a CHECK the database would raise for line 7) costs that line only:
    the batch is split until the line is found and the other lines of the batch commit."""
    from app.examples import ingest

    real = ingest.store

    def refusing(session, **kw):
        if any(c.line == 7 for c in kw["candidates"]):
            raise sa_exc.DataError("INSERT", {}, psycopg.errors.DataError("value refused"))
        return real(session, **kw)

    monkeypatch.setattr(ingest, "store", refusing)
    ds = new_dataset(pg_api)
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=_body(range(20)),
                                   headers=NDJSON)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (19, 1)
    assert body["errors"] == [{"line": 7, "code": "store_failed",
                               "message": "the database refused this line; it was not stored"}]
    assert _stored_refs(ds["id"]) == (19, 19)


# --- truthful batches -------------------------------------------------------------------------------

def _db_gone(after_calls: int, monkeypatch, *, mark_fails: bool = True):
    """From the (after_calls+1)-th write on, the database is unreachable: every write (and, with
    mark_fails, the import's own attempt to mark its batch) fails with a lost connection, as in a
    PostgreSQL restart."""
    from app.examples import importer, ingest

    real, calls = ingest.store, {"n": 0}

    def lost():
        return sa_exc.OperationalError("INSERT", {}, psycopg.OperationalError("server closed the connection"),
                                       connection_invalidated=True)

    def store(session, **kw):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise lost()
        return real(session, **kw)

    def mark(_batch_id):
        raise lost()

    monkeypatch.setattr(ingest, "store", store)
    if mark_fails:
        monkeypatch.setattr(importer, "mark_interrupted", mark)
    return calls


def _batch_row(batch_id: str):
    from app.core.db import session_scope
    from app.models.example import IngestBatch

    with session_scope() as s:
        return s.get(IngestBatch, uuid.UUID(batch_id))


def _open_batches(dataset_id: str) -> list:
    from app.core.db import session_scope
    from app.models.example import IngestBatch

    with session_scope() as s:
        return list(s.scalars(select(IngestBatch).where(IngestBatch.dataset_id == uuid.UUID(dataset_id))))


def test_an_import_cut_by_the_database_leaves_an_interrupted_batch_with_exact_counts_and_a_resend_completes_it(
        broker, pg_api, small_batches):
    """Before: the batch stayed `open` with accepted 0 forever while rows were committed."""
    from app.examples import jobs
    from app.main import create_app

    ds = new_dataset(pg_api)
    refs = range(230)  # 5 write transactions of 50 lines; the 4th one finds the database gone
    body = _body(refs)
    with pytest.MonkeyPatch.context() as mp, TestClient(create_app(), raise_server_exceptions=False) as client:
        _db_gone(3, mp)
        r = client.post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                        headers={**NDJSON, "Authorization": f"Bearer {pg_api.keys['curator']}"})
    assert r.status_code == 500
    [batch] = _open_batches(ds["id"])
    assert batch.status == "open"  # the import could not say it died; the sweep must
    assert jobs.sweep_stale_imports(lease_s=3600) == 0  # a live import's lease is respected
    assert jobs.sweep_stale_imports(lease_s=0) == 1
    b = pg_api.as_("auditor").get(f"/v1/ingest-batches/{batch.id}").json()
    assert b["status"] == "interrupted"
    assert (b["accepted"], b["unchanged"], b["rejected"], b["lines_committed"]) == (150, 0, 0, 150)
    assert _stored_refs(ds["id"]) == (150, 150)
    # The re-send of the whole file completes it: committed lines come back unchanged, none twice.
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON)
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["unchanged"]) == (80, 150)
    assert _stored_refs(ds["id"]) == (230, 230)
    assert pg_api.as_("auditor").get("/v1/audit/verify").json()["ok"]


def test_resending_the_lines_after_lines_committed_completes_an_import_without_source_refs(
        broker, pg_api, small_batches):
    """Lines without a source_ref are not idempotent; lines_committed says where to resume."""
    from app.main import create_app

    ds = new_dataset(pg_api)
    lines = [orjson.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(120)]
    with pytest.MonkeyPatch.context() as mp, TestClient(create_app(), raise_server_exceptions=False) as client:
        _db_gone(1, mp, mark_fails=False)
        r = client.post(f"/v1/datasets/{ds['id']}/examples:import", content=b"\n".join(lines) + b"\n",
                        headers={**NDJSON, "Authorization": f"Bearer {pg_api.keys['curator']}"})
    assert r.status_code == 500
    [batch] = _open_batches(ds["id"])
    # The import itself marked it: its own connection to the database still worked for that.
    assert batch.status == "interrupted" and batch.lines_committed == 50 and batch.accepted == 50
    rest = lines[batch.lines_committed:]
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=b"\n".join(rest) + b"\n",
                                   headers=NDJSON)
    assert r.status_code == 200 and r.json()["accepted"] == 70
    assert _stored_refs(ds["id"])[0] == 120


def test_api_start_up_marks_a_stale_open_import_interrupted(broker, pg_api):
    from app.core.db import session_scope
    from app.main import create_app
    from app.models.example import IngestBatch

    ds = new_dataset(pg_api)
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=_body(range(5)),
                                   headers=NDJSON)
    bid = uuid.UUID(r.json()["batch_id"])
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with session_scope() as s:  # as a killed API leaves it: open, last write an hour ago
        s.execute(update(IngestBatch).where(IngestBatch.id == bid).values(status="open", last_seen=long_ago,
                                                                          finished_at=None))
    with TestClient(create_app()):
        pass
    b = _batch_row(str(bid))
    assert b.status == "interrupted" and b.accepted == 5 and b.lines_committed == 5



def test_a_streaming_import_holds_no_idle_transaction_between_batches(broker, pg_api, small_batches, pg):
    """Before: the key lookup's transaction stayed open (idle in transaction, one pooled connection)
    for the whole stream, so 20 concurrent imports needed 40 connections of a pool of 30 and the
    late ones failed with a pool timeout (500)."""
    from app.main import create_app

    ds = new_dataset(pg_api)
    body = _body(range(60))
    dsn = pg.replace("postgresql+psycopg://", "postgresql://")
    seen: list[int] = []

    async def gen():
        yield body[: len(body) // 2]
        await asyncio.sleep(1.0)  # the first batch has been written and committed by now
        with psycopg.connect(dsn) as conn:
            seen.append(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND state = 'idle in transaction'").fetchone()[0])
        yield body[len(body) // 2:]

    [r] = asyncio.run(_gather(create_app(), pg_api.keys["curator"],
                              [("POST", f"/v1/datasets/{ds['id']}/examples:import",
                                {"content": gen(), "headers": NDJSON})]))
    assert r.status_code == 200 and r.json()["accepted"] == 60, r.text
    assert seen == [0]


def test_the_stale_statistics_lookup_finds_what_the_probe_finds(broker, pg_api):
    """The hash-join lookup (used while the planner does not know a dataset's rows yet) and the
    unique-index probe return the same examples, contents and statuses."""
    from app.core.db import session_scope
    from app.examples import ingest

    ds = new_dataset(pg_api)
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=_body(range(300)),
                                   headers=NDJSON)
    assert r.json()["accepted"] == 300
    refs = [("race", f"ref-{i}") for i in range(250, 400)]  # 50 stored, 100 not
    with session_scope() as s:
        probed = ingest._existing_refs(s, uuid.UUID(ds["id"]), refs)
        hashed = ingest._existing_refs_hashed(s, {"sources": [a for a, _ in refs], "refs": [b for _, b in refs],
                                                  "ds": uuid.UUID(ds["id"])})
    assert len(probed) == 50 and probed == hashed
    # And a re-send through it still tells unchanged lines from conflicting ones.
    ingest._PROBE_PLAN_OK.discard(uuid.UUID(ds["id"]))
    changed = orjson.dumps({"instruction": "different", "output": "x",
                            "provenance": {"source": "race", "source_ref": "ref-3"}})
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import",
                                   content=_body(range(3)) + changed + b"\n", headers=NDJSON)
    assert (r.json()["unchanged"], [e["code"] for e in r.json()["errors"]]) == (3, ["source_ref_conflict"])
