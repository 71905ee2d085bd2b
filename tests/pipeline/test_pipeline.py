import datetime as dt

import orjson
import pytest
from sqlalchemy import select, update

from app.core.db import session_scope
from app.models.example import Example, ExampleRevision
from app.pipeline import jobs as pipeline_jobs
from app.pipeline import service as pipeline
from app.pipeline import stages
from tests.factories import new_dataset

NDJSON = {"Content-Type": "application/x-ndjson"}


def _ingest(api, ds, rows):
    body = b"\n".join(orjson.dumps(r) for r in rows)
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON)
    assert r.status_code == 200, r.text
    return r.json()


def test_quality_flags_are_stored_on_the_revision(api):
    ds = new_dataset(api, "chat")
    rows = [{"messages": [{"role": "user", "content": "Hi\x07 there"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Hi\x07 there"}, {"role": "assistant", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": "What is the capital of Japan today?"},
                          {"role": "assistant", "content": "日本の首都は東京です。東京は大きな都市です。"}]}]
    _ingest(api, ds, rows)
    items = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]
    codes = [sorted({f["code"] for f in i["quality_flags"]}) for i in items]
    assert "control_characters" in codes[0] and "repeated_turn" in codes[0]
    assert items[0]["quality"]["approx_tokens"] > 0
    assert items[1]["quality_flags"] == [] or "script_mismatch" in codes[1]


def test_stage_run_is_idempotent_and_a_crash_changes_nothing(db, monkeypatch):
    monkeypatch.setenv("PEDIGREE_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is sent: we drive stages by hand
    from app.core.config import reset_settings

    reset_settings()
    from app.core import jobs

    sent = []
    monkeypatch.setattr(jobs, "send", lambda name, args, queue: sent.append((name, args, queue)))
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.factories import Api, make_keys

    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        ds = new_dataset(api)
        _ingest(api, ds, [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)])
    assert sent and sent[0][0] == pipeline.RUN_STAGE_TASK and sent[0][2] == "default"
    ids = sent[0][1][1]
    with session_scope() as s:
        assert {e.stage for e in s.scalars(select(Example))} == {"quality"}

    def boom(**_):
        raise RuntimeError("worker died mid-batch")

    monkeypatch.setattr(stages, "STAGES", [stages.Stage("quality", "default", boom)])
    with pytest.raises(RuntimeError):
        pipeline_jobs.run_stage("quality", ids)
    with session_scope() as s:
        assert {(e.stage, e.status) for e in s.scalars(select(Example))} == {("quality", "ingested")}
        assert all(r.quality is None for r in s.scalars(select(ExampleRevision)))
    monkeypatch.undo()
    monkeypatch.setenv("PEDIGREE_REDIS_URL", "redis://127.0.0.1:1/0")
    reset_settings()
    monkeypatch.setattr(jobs, "send", lambda name, args, queue: sent.append((name, args, queue)))
    assert pipeline_jobs.run_stage("quality", ids) == 4
    assert pipeline_jobs.run_stage("quality", ids) == 0  # redelivered: nothing left at the stage
    nxt = stages.next_stage("quality")  # later stages (pii, dedup) follow; they are driven elsewhere
    with session_scope() as s:
        expected = {(None, "pending_review")} if nxt is None else {(nxt, "ingested")}
        assert {(e.stage, e.status) for e in s.scalars(select(Example))} == expected
        assert all(r.quality is not None for r in s.scalars(select(ExampleRevision)))


def test_sweeper_reenqueues_stalled_examples(db, monkeypatch):
    from app.core import jobs

    sent = []
    monkeypatch.setattr(jobs, "send", lambda name, args, queue: sent.append((name, args)))
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.factories import Api, make_keys

    with TestClient(create_app()) as client:
        api = Api(client, make_keys())
        ds = new_dataset(api)
        _ingest(api, ds, [{"instruction": "q", "output": "a"}])
    sent.clear()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with session_scope() as s:
        s.execute(update(Example).values(updated_at=old))
    assert pipeline_jobs.sweep() == 1
    assert sent and sent[0][1][0] == "quality"
