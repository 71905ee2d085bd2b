"""Unique canary PII traced through everything the system writes.

Canary values go into every field an example can carry (its text, `source_ref`, metadata values, tags), into
bad lines, an exact duplicate and a near duplicate. A real API process (uvicorn) and a real Celery worker run
the pipeline over PostgreSQL and Redis; the test then freezes a snapshot, registers a training run through the
trainer's protocol, files an erasure request, and asserts that no canary appears in:

* any GET route of the OpenAPI document, for every role (path parameters filled with real ids), and the
  reviewer page's own routes;
* any table but the vault (every row, as text; provenance canaries are allowed only in `examples`, the
  record of provenance admin reads);
* the API's and the worker's logs (access log included, with a canary in a query string);
* Redis (every key and value, Celery message bodies decoded);
* the snapshot exports (every format, Parquet read back), the datasheet, and the OpenLineage events.

The one exception is the rule of docs/pii.md: admin reads provenance as stored, and `GET /v1/examples/{id}/raw`
(admin only) returns the raw text from the vault.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
import redis as redis_lib
from sqlalchemy import text

from tests.factories import key_id, make_keys
from tests.faults.conftest import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.worker]

# Three canary sets, so a hit says where it came from. Content canaries are found by the scrubber; provenance
# canaries are pseudonymised; bad-line canaries are never stored at all.
C_NAME, C_EMAIL, C_PHONE = "Margarethe Quixwright", "margarethe.quixwright@example.org", "415-555-0143"
P_NAME, P_EMAIL, P_PHONE, P_DIGITS = "Zebulon Vantargo", "zebulon.vantargo@example.net", "312-555-0178", 3125550178
B_NAME, B_EMAIL = "Ottoline Brackwater", "ottoline.brackwater@example.com"
CONTENT = ("quixwright", "555-0143", "4155550143")
PROVENANCE = ("vantargo", "555-0178", "3125550178")
BAD = ("brackwater",)
ROLES = ("admin", "curator", "reviewer", "trainer", "auditor")
# The first import's X-Request-ID: its stage tasks' log lines on the worker must carry it.
TRACE_ID = "canary-trace-7f3a9c"
NDJSON = {"Content-Type": "application/x-ndjson"}

ARTICLE = (f"Dear support team, this is {C_NAME} writing again about the delayed refund for my order. You can "
           f"reach me at {C_EMAIL} or on {C_PHONE} during office hours. The parcel was returned three weeks ago, "
           "the tracking page says it arrived at your warehouse, and nobody has answered my two previous messages. "
           "I would like the refund to go back to the original card, and I would appreciate a short confirmation "
           "once it has been issued, because my bank statement closes at the end of the month.")


def _hits(blob: str, tokens: tuple[str, ...]) -> list[str]:
    low = blob.lower()
    return [t for t in tokens if t in low]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def receiver():
    """An OpenLineage endpoint: every event the API sends lands in `events`."""
    events: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", events
    srv.shutdown()


@pytest.fixture
def canary_stack(stack, receiver, tmp_path):
    """The fault suite's own PostgreSQL and Redis (tests/faults/conftest.py), a real worker, and a real API
    process with its access log on (the suite's `start_api` turns it off)."""
    ol_url, events = receiver
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    # Production's observability on: JSON logs, multiprocess metrics in one folder shared by the API and the
    # worker (one host), and the worker's own exporter.
    metrics_port = _free_port()
    stack.env.update({"PEDIGREE_OPENLINEAGE_URL": ol_url, "PEDIGREE_API_DOCS": "true",
                      "PEDIGREE_ARTIFACT_ROOT": str(artifacts), "PEDIGREE_LOG_FORMAT": "json",
                      "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
                      "PEDIGREE_METRICS_PORT": str(metrics_port)})
    keys = make_keys()
    stack.start_worker("worker")
    port = _free_port()
    with (stack.logs / "api.log").open("ab") as fh:
        stack.procs["api"] = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "info"], cwd=ROOT, env=stack.env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.time() + 60
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline and stack.procs["api"].poll() is None, stack.log("api")[-2000:]
        time.sleep(0.2)
    yield {"client": client, "keys": keys, "stack": stack, "events": events, "artifacts": artifacts,
           "exporter": f"http://127.0.0.1:{metrics_port}"}
    client.close()


class _As:
    def __init__(self, client: httpx.Client, keys: dict[str, str]):
        self.client, self.keys = client, keys

    def __call__(self, role: str, method: str, url: str, **kw) -> httpx.Response:
        return self.client.request(method, url, headers={"Authorization": f"Bearer {self.keys[role]}",
                                                         **kw.pop("headers", {})}, **kw)


def _import(call: _As, ds_id: str, lines: list[bytes], request_id: str | None = None, **params) -> dict:
    headers = {**NDJSON, "X-Request-ID": request_id} if request_id else NDJSON
    r = call("curator", "POST", f"/v1/datasets/{ds_id}/examples:import", content=b"\n".join(lines), headers=headers,
             params=params)
    if request_id:
        assert r.headers["X-Request-ID"] == request_id
    assert r.status_code in (200, 422), r.text
    return r.json()


def _redis_dump(url: str) -> str:
    r = redis_lib.Redis.from_url(url)
    out = []
    for key in r.scan_iter(count=1000):
        out.append(key.decode(errors="replace"))
        kind = r.type(key).decode()
        if kind == "string":
            vals = [r.get(key)]
        elif kind == "list":
            vals = r.lrange(key, 0, -1)
        elif kind == "hash":
            vals = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "set":
            vals = list(r.smembers(key))
        elif kind == "zset":
            vals = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        else:
            vals = []
        for v in vals:
            out.append(v.decode(errors="replace"))
            out.extend(_celery_bodies(v))
    return "\n".join(out)


def _celery_bodies(value: bytes) -> list[str]:
    """Kombu stores a message as JSON whose body is base64: decode it, or a canary inside would hide."""
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError:
        return []
    found = []
    stack = [msg]
    while stack:
        m = stack.pop()
        if isinstance(m, list):
            stack.extend(m)
        elif isinstance(m, dict):
            body = m.get("body")
            if isinstance(body, str) and m.get("properties", {}).get("body_encoding") == "base64":
                found.append(base64.b64decode(body).decode(errors="replace"))
            stack.extend(m.values())
        elif isinstance(m, str) and m.startswith("{"):
            found.extend(_celery_bodies(m.encode()))
    return found


def _tables_dump() -> dict[str, str]:
    from app.core.db import get_engine

    out = {}
    with get_engine().connect() as conn:
        tables = [r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        assert "examples" in tables and "pii_vault" in tables
        for t in tables:
            if t == "pii_vault":  # the one place raw text may live (encrypted)
                continue
            out[t] = "\n".join(r[0] for r in conn.execute(text(f'SELECT CAST(t AS text) FROM "{t}" AS t')))
    return out


def test_no_canary_outside_the_vault(canary_stack):
    cs = canary_stack
    stack = cs["stack"]
    call = _As(cs["client"], cs["keys"])

    # --- ingest ------------------------------------------------------------------------------------------
    r = call("curator", "POST", "/v1/datasets", json={"name": "canary-support", "format": "instruction"})
    assert r.status_code == 201, r.text
    ds_id = r.json()["id"]
    prov = {"source": "crm", "source_ref": f"ticket-for-{P_EMAIL}", "collected_at": "2026-03-01T10:00:00Z",
            "license": "internal", "legal_basis": "consent", "tags": [f"owner:{P_NAME}", P_EMAIL],
            "metadata": {"customer": P_NAME, "contact": {"phone": P_PHONE, "digits": P_DIGITS}, "vip": True}}
    canon = {"instruction": ARTICLE, "input": "", "output": f"Thanks {C_NAME}, the refund was issued today.",
             "provenance": prov}
    near = {**canon, "instruction": ARTICLE.replace("three weeks ago", "four weeks ago"),
            "provenance": {**prov, "source_ref": f"near-for-{P_EMAIL}"}}
    dup = {**canon, "provenance": {**prov, "source": "mail", "source_ref": f"dup-for-{P_EMAIL}"}}
    lines = [
        orjson.dumps(canon),
        orjson.dumps({"instruction": "a", "output": "b", "provenance": {"collected_at": B_NAME}}),
        f'{{"instruction": "Ask {B_NAME} about {B_EMAIL}'.encode(),  # not JSON
        orjson.dumps({"instruction": "a", "output": "b", "provenance": {"source_ref": B_EMAIL * 20}}),  # too long
        orjson.dumps({"instruction": "a", "output": "b", "provenance": {"tags": B_NAME}}),  # wrong type
        orjson.dumps(near),
        orjson.dumps({"instruction": "Who wrote?", "output": f"It was {C_NAME} ({C_EMAIL}).",
                      "provenance": {"source": "crm", "source_ref": f"short-for-{P_EMAIL}", "tags": [P_NAME]}}),
    ]
    first = _import(call, ds_id, lines, request_id=TRACE_ID)
    assert first["accepted"] == 3 and first["rejected"] == 4, first
    second = _import(call, ds_id, [orjson.dumps(dup),
                                   orjson.dumps({**canon, "output": "changed"})])  # same ref, other text: conflict
    assert second["exact_duplicates"] == 1 and second["errors"][0]["code"] == "source_ref_conflict", second
    # The JSON endpoint's 422 (all-or-nothing) echoes no value either.
    r = call("curator", "POST", f"/v1/datasets/{ds_id}/examples",
             json=[{"instruction": B_NAME, "output": "x", "provenance": {"collected_at": B_EMAIL}}])
    assert r.status_code == 422, r.text
    responses = {"import-1": orjson.dumps(first).decode(), "import-2": orjson.dumps(second).decode(),
                 "examples-422": r.text}
    # A chat dataset: canaries in the system, user and assistant turns.
    r = call("curator", "POST", "/v1/datasets", json={"name": "canary-chat", "format": "chat"})
    assert r.status_code == 201, r.text
    chat_id = r.json()["id"]
    chat = _import(call, chat_id, [orjson.dumps({"messages": [
        {"role": "system", "content": f"You answer {C_NAME}'s support tickets."},
        {"role": "user", "content": f"Hi, this is {C_NAME}, call me on {C_PHONE} or mail {C_EMAIL}."},
        {"role": "assistant", "content": f"Thanks {C_NAME}, I will call {C_PHONE} today."}],
        "provenance": {"source": "chat", "source_ref": f"chat-for-{P_EMAIL}", "metadata": {"agent": P_NAME}}})])
    assert chat["accepted"] == 1, chat

    # --- the pipeline, on the real worker ----------------------------------------------------------------
    deadline = time.time() + 180
    while True:
        items = call("admin", "GET", f"/v1/datasets/{ds_id}/examples").json()["items"]
        chat_items = call("admin", "GET", f"/v1/datasets/{chat_id}/examples").json()["items"]
        if len(items) == 4 and all(i["stage"] is None for i in items + chat_items):
            break
        assert time.time() < deadline, items + chat_items
        time.sleep(0.5)
    by_status = sorted(i["status"] for i in items)
    assert by_status.count("duplicate") >= 2, by_status  # the exact duplicate and (via dedup) the near one
    example_ids = [i["id"] for i in items + chat_items]
    ids_by_ref = {i["provenance"]["source_ref"]: i["id"] for i in items}

    # --- review, snapshot, training, erasure -------------------------------------------------------------
    short = call("reviewer", "GET", f"/v1/examples/{ids_by_ref[f'short-for-{P_EMAIL}']}").json()
    r = call("reviewer", "POST", f"/v1/examples/{short['id']}/reviews",
             json={"decision": "approve", "revision_id": short["revision"]["id"]})
    assert r.status_code in (200, 201), r.text
    r = call("curator", "POST", "/v1/snapshots", json={
        "dataset_id": ds_id, "name": "canary-snap", "validation_fraction": 0.0,
        "filter": {"statuses": ["pending_review", "approved"], "include_duplicates": True}})
    assert r.status_code == 201, r.text
    snap = r.json()
    recs = [json.loads(ln) for ln in call("trainer", "GET", f"/v1/snapshots/{snap['id']}/export",
                                          params={"format": "pedigree"}).content.splitlines() if ln.strip()]
    assert len(recs) >= 3 and any("<PERSON>" in orjson.dumps(rec).decode() for rec in recs), recs
    r = call("curator", "POST", "/v1/training-runs", json={
        "snapshot_id": snap["id"], "base_model": "sshleifer/tiny-gpt2", "method": "lora",
        "hyperparameters": {"epochs": 1, "max_steps": 1}, "model_name": "canary-bot"})
    assert r.status_code == 201, r.text
    run = r.json()
    assert call("trainer", "POST", f"/v1/training-runs/{run['id']}/start", json={"worker_host": "gpu-1"}).status_code == 200
    from tests.factories import complete_body, fake_artifact

    uri, sha = fake_artifact(cs["artifacts"], "canary-bot", run["id"])
    r = call("trainer", "POST", f"/v1/training-runs/{run['id']}/complete", json=complete_body(recs, uri, sha))
    assert r.status_code == 200, r.text
    r = call("curator", "POST", "/v1/erasure-requests", json={
        "selector": {"source_refs": [f"ticket-for-{P_EMAIL}"]}, "reason": "subject request", "dry_run": True})
    assert r.status_code == 201, r.text
    erasure_id = r.json()["id"]
    assert r.json()["affected"]["examples"] == 1
    responses["erasure"] = r.text
    # A canary in a query string: the access log must not carry it.
    r = call("curator", "GET", f"/v1/datasets/{ds_id}/examples", params={"source_ref": f"ticket-for-{P_EMAIL}"})
    assert len(r.json()["items"]) == 1

    # --- every GET route, every role ---------------------------------------------------------------------
    batches = [first["batch_id"], second["batch_id"], chat["batch_id"]]
    params = {"dataset_ref": [ds_id, chat_id], "example_id": example_ids, "batch_id": batches, "snapshot_id": [snap["id"]],
              "a": [snap["id"]], "b": [snap["id"]], "run_id": [run["id"]], "name": ["canary-bot"], "version": ["1"],
              "alias": ["production"], "request_id": [erasure_id], "source": ["crm", "mail"],
              "license": ["internal"], "reviewer": ["test-reviewer"]}
    queries = {"/v1/snapshots/{snapshot_id}/export": [{"format": f} for f in
                                                      ("pedigree", "openai-chat", "alpaca", "parquet")],
               "/v1/snapshots/{snapshot_id}/datasheet": [{"format": "md"}, {"format": "html"}, {}],
               "/v1/lineage/examples/{example_id}": [{"include_audit": "true"}],
               "/v1/review/queue": [{"dataset": ds_id, "limit": 100}],
               "/v1/review/stats": [{"dataset": ds_id}],
               "/v1/datasets/{dataset_ref}/pii-report": [{}, {"reveal": "true"}],
               "/v1/audit/events": [{"limit": 1000}],
               "/v1/training-runs/{run_id}": [{"model_card": "true"}, {}],
               "/v1/snapshots/{snapshot_id}/proof": [{"example_id": e} for e in example_ids]}
    from app.main import create_app

    spec = create_app().openapi()
    gets = [p for p, ops in spec["paths"].items() if "get" in ops]
    assert len(gets) >= 40, gets
    leaks: list[str] = []
    answered = 0
    for path in gets:
        names = [q["name"] for q in spec["paths"][path]["get"].get("parameters", []) if q["in"] == "path"]
        urls = [path]
        for n in names:
            urls = [u.replace("{" + n + "}", v) for u in urls for v in params.get(n, ["x"])]
        for url in urls:
            for q in queries.get(path, [{}]):
                for role in ROLES:
                    resp = call(role, "GET", url, params=q)
                    assert resp.status_code < 500, (role, url, resp.text)
                    answered += resp.status_code == 200
                    body = resp.text
                    if q.get("format") == "parquet" and resp.status_code == 200:
                        import pyarrow.parquet as pq

                        body = json.dumps(pq.read_table(io.BytesIO(resp.content)).to_pylist(), default=str)
                    allowed = set()
                    if role == "admin":
                        allowed = set(PROVENANCE)  # admin reads provenance as stored
                        if path == "/v1/examples/{example_id}/raw" or q.get("reveal") == "true":
                            allowed |= set(CONTENT)  # the audited reveals from the vault
                    hit = _hits(body, tuple(t for t in CONTENT + PROVENANCE + BAD if t not in allowed))
                    if hit:
                        leaks.append(f"{role} GET {url} {q}: {hit}")
    assert answered > 100, answered
    # The reviewer page (not in the OpenAPI document): signed in with a reviewer key, as a browser would.
    base = str(cs["client"].base_url).rstrip("/")
    with httpx.Client(base_url=base, timeout=60) as browser:
        page = browser.get("/review")
        pre = re.search(r'name="pre" value="([^"]+)"', page.text).group(1)
        r = browser.post("/review/session", data={"api_key": cs["keys"]["reviewer"], "pre": pre},
                         headers={"Origin": base})
        assert r.status_code in (200, 303) and "pedigree_review" in browser.cookies, r.text
        pages = [f"/review?dataset={d}" for d in (ds_id, chat_id)]
        pages += [f"/review/api/next?dataset={d}" for d in (ds_id, chat_id)]
        pages += [f"/review/api/examples/{e}" for e in example_ids]
        for url in pages:
            resp = browser.get(url)
            assert resp.status_code == 200, (url, resp.text)
            if hit := _hits(resp.text, CONTENT + PROVENANCE + BAD):
                leaks.append(f"reviewer page {url}: {hit}")
    for what, body in responses.items():
        if hit := _hits(body, CONTENT + PROVENANCE + BAD):
            leaks.append(f"response of {what}: {hit}")
    # The admin's raw reveal really is the raw text (the canary is traceable, just not outside the vault).
    # (under an approved grant: without one the sweep above got 403 no_grant from every reveal)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    dup_id = ids_by_ref[f"dup-for-{P_EMAIL}"]
    dup_ds = call("curator", "GET", f"/v1/examples/{dup_id}").json()["dataset_id"]
    grant = call("admin", "POST", "/v1/pii-grants", json={"key_id": key_id(cs["keys"]["admin"]), "dataset": dup_ds,
                                                          "purpose": "canary trace", "expires_at": until}).json()
    assert call("admin2", "POST", f"/v1/pii-grants/{grant['id']}/approve").status_code == 200
    raw = call("admin", "GET", f"/v1/examples/{ids_by_ref[f'dup-for-{P_EMAIL}']}/raw").json()
    assert C_NAME in raw["content"]["instruction"]
    if raw["source"] != "vault":
        leaks.append(f"the exact duplicate's raw text is read from {raw['source']}, not the vault")

    # --- tables, Redis, OpenLineage, logs ----------------------------------------------------------------
    for table, dump in _tables_dump().items():
        # `examples` is the record of provenance: refs, metadata and tags are stored as given (the unique ref
        # index, filters and erasure by ref need the value) and only admin reads them so (docs/pii.md).
        if hit := _hits(dump, CONTENT + BAD if table == "examples" else CONTENT + PROVENANCE + BAD):
            leaks.append(f"table {table}: {hit}")
    if hit := _hits(_redis_dump(stack.redis.url), CONTENT + PROVENANCE + BAD):
        leaks.append(f"redis: {hit}")
    deadline = time.time() + 30
    while not any(e.get("eventType") == "COMPLETE" and "training" in json.dumps(e.get("job", {}))
                  for e in cs["events"]) and time.time() < deadline:
        time.sleep(0.2)
    kinds = {(e.get("eventType"), e.get("job", {}).get("name")) for e in cs["events"]}
    assert len(cs["events"]) >= 4, kinds  # freeze START/COMPLETE, training START/COMPLETE
    if hit := _hits(json.dumps(cs["events"]), CONTENT + PROVENANCE + BAD):
        leaks.append(f"openlineage: {hit}")
    worker_log = stack.log("worker")
    assert "pedigree.pipeline.run_stage" in worker_log
    api_log = stack.log("api")
    assert f"/v1/datasets/{ds_id}/examples?source_ref=" in api_log, api_log[-2000:]  # the access log is on
    for what, log in (("worker log", worker_log), ("api log", api_log)):
        if hit := _hits(log, CONTENT + PROVENANCE + BAD):
            leaks.append(f"{what}: {hit}")
    # Structured logs: every line the API wrote is one JSON object, access log included; the worker's are too
    # (but for the banner Celery prints before logging starts). The import's request id is on its access
    # line and on the worker's lines of the stage tasks it caused, whichever stage.
    api_lines = [json.loads(ln) for ln in api_log.splitlines() if ln.strip()]
    traced = [ln for ln in api_lines if ln.get("request_id") == TRACE_ID]
    assert any(ln["logger"] == "uvicorn.access" and "examples:import" in ln["message"] for ln in traced), traced
    worker_lines = [json.loads(ln) for ln in worker_log.splitlines() if ln.startswith("{")]
    assert len(worker_lines) > 10
    stage_lines = [ln for ln in worker_lines if ln.get("request_id") == TRACE_ID
                   and ln.get("task") == "pedigree.pipeline.run_stage"]
    assert stage_lines, worker_lines[-20:]
    # Metrics: the worker's exporter serves what its pool child recorded (multiprocess folder); the API's
    # /metrics, on the same host, merges the worker's counters with its own and the database levels.
    from prometheus_client.parser import text_string_to_metric_families

    exported = httpx.get(f"{cs['exporter']}/metrics", timeout=10)
    assert exported.status_code == 200
    wfam = {f.name: f for f in text_string_to_metric_families(exported.text)}
    ok = [s for s in wfam["pedigree_task_outcomes"].samples
          if s.labels == {"task": "pedigree.pipeline.run_stage", "outcome": "ok"} and s.name.endswith("_total")]
    assert ok and ok[0].value >= 3, wfam["pedigree_task_outcomes"].samples
    assert httpx.get(f"{cs['exporter']}/readyz", timeout=10).json()["ok"] is True
    scraped = call("admin", "GET", "/metrics")
    assert scraped.status_code == 200
    afam = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    assert any(s.labels.get("stage") == "pii" and s.name.endswith("_count") and s.value >= 1
               for s in afam["pedigree_stage_batch_duration_seconds"].samples)
    assert any(s.labels.get("route") == "/v1/datasets/{dataset_ref}/examples:import"
               for s in afam["pedigree_http_request_duration_seconds"].samples)
    for what, text_ in (("worker metrics", exported.text), ("api metrics", scraped.text)):
        if hit := _hits(text_, CONTENT + PROVENANCE + BAD):
            leaks.append(f"{what}: {hit}")
    assert not leaks, "\n".join(leaks)
