"""GET /metrics: the Prometheus text format (parsed by prometheus-client's own parser), the request histogram
by route template, the pipeline levels read from the database at scrape time, counters merged across
processes in multiprocess mode, and the alert rules checked by promtool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core import metrics as core_metrics
from app.core.config import reset_settings
from app.ops import metrics as ops_metrics
from tests.factories import Api, ingest, instruction_line, make_keys, new_dataset

ROOT = Path(__file__).resolve().parents[2]


def _families(api: Api) -> dict:
    r = api.as_("admin").get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fams: dict, family: str, sample: str, **labels: str) -> float:
    got = [s.value for s in fams[family].samples if s.name == sample and all(s.labels.get(k) == v
                                                                              for k, v in labels.items())]
    return sum(got)


def test_contract_histogram_and_pipeline_gauge(api):
    ops_metrics.LEVELS.clear()
    before = _families(api)
    ds = new_dataset(api)
    ingest(api, ds, [instruction_line(i) for i in range(5)])
    api.as_("curator").get(f"/v1/datasets/{ds['id']}")
    assert api.client.get("/v1/datasets").status_code == 401  # no key
    ops_metrics.LEVELS.clear()
    fams = _families(api)

    hist = fams["pedigree_http_request_duration_seconds"]
    assert hist.type == "histogram"
    # Route templates, never raw paths: the dataset's id is not a label value.
    created = _value(fams, hist.name, hist.name + "_count", route="/v1/datasets", method="POST", status="201")
    assert created - _value(before, hist.name, hist.name + "_count", route="/v1/datasets", method="POST",
                            status="201") == 1
    assert _value(fams, hist.name, hist.name + "_count", route="/v1/datasets/{dataset_ref}", status="200") >= 1
    assert not any(ds["id"] in str(s.labels) for s in hist.samples)
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["route"] == "/v1/datasets"]
    assert {s.labels["le"] for s in buckets} >= {"0.005", "1.0", "+Inf"}

    gauge = fams["pedigree_pipeline_examples"]
    assert gauge.type == "gauge"
    assert all({"stage", "status"} <= set(s.labels) for s in gauge.samples)
    # The embedded mode ran the pipeline in-process: all five are through it, waiting for review.
    assert sum(s.value for s in gauge.samples) == 5
    assert _value(fams, gauge.name, gauge.name, stage="done", status="pending_review") == 5

    fails = "pedigree_auth_failures"
    assert _value(fams, fails, fails + "_total", status="401") - _value(before, fails, fails + "_total",
                                                                          status="401") >= 1
    stage = "pedigree_stage_batch_duration_seconds"
    assert _value(fams, stage, stage + "_count", stage="pii", outcome="ok") >= 1
    assert _value(fams, "pedigree_training_runs", "pedigree_training_runs") == 0
    assert _value(fams, "pedigree_metrics_levels_up", "pedigree_metrics_levels_up") == 1

    # Verifying the chain moves the checkpoint the gauges read, and counts the result.
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True
    ops_metrics.LEVELS.clear()
    fams = _families(api)
    head = _value(fams, "pedigree_audit_head_event", "pedigree_audit_head_event")
    assert head > 0 and _value(fams, "pedigree_audit_last_verified_event", "pedigree_audit_last_verified_event") == head
    assert _value(fams, "pedigree_audit_verifications", "pedigree_audit_verifications_total", result="ok") >= 1


def test_metrics_need_the_admin_key(api):
    assert api.client.get("/metrics").status_code == 401
    for role in ("curator", "auditor", "reviewer", "trainer"):
        r = api.as_(role).get("/metrics")
        assert r.status_code == 403, (role, r.text)
        assert r.json()["error"]["code"] == "forbidden"


def test_metrics_off_records_nothing_and_serves_nothing(db, monkeypatch):
    from app.main import create_app

    monkeypatch.setenv("PEDIGREE_METRICS", "false")
    reset_settings()
    try:
        with TestClient(create_app()) as client:
            api = Api(client, make_keys())
            count = core_metrics.HTTP_DURATION.labels(method="GET", route="/v1/datasets", status="200")
            before = count._sum.get()
            assert api.as_("curator").get("/v1/datasets").status_code == 200
            assert count._sum.get() == before
            r = api.as_("admin").get("/metrics")
            assert r.status_code == 404 and r.json()["error"]["code"] == "metrics_off"
    finally:
        monkeypatch.delenv("PEDIGREE_METRICS")
        reset_settings()


@pytest.mark.postgres
@pytest.mark.redis
def test_queue_depth_per_queue_from_redis(pg, redis_url):
    # Redis configured and no worker consuming: the first stage's task (quality, on queue "default") waits.
    from app.main import create_app
    from tests.conftest import _use_db

    redis_lib.Redis.from_url(redis_url).flushdb()
    _use_db(pg, redis_url)
    try:
        with TestClient(create_app()) as client:
            api = Api(client, make_keys())
            ingest(api, new_dataset(api), [instruction_line(i) for i in range(3)])
            ops_metrics.LEVELS.clear()
            fams = _families(api)
            depth = {s.labels["queue"]: s.value for s in fams["pedigree_celery_queue_length"].samples}
            assert set(depth) == {"default", "pii", "dedup", "train"}
            assert depth["default"] >= 1 and depth["pii"] == depth["train"] == 0
            assert _value(fams, "pedigree_pipeline_examples", "pedigree_pipeline_examples", stage="quality") == 3
            oldest = _value(fams, "pedigree_pipeline_stage_oldest_seconds", "pedigree_pipeline_stage_oldest_seconds",
                            stage="quality")
            assert 0 <= oldest < 60
    finally:
        redis_lib.Redis.from_url(redis_url).flushdb()
        _use_db(pg)


_RECORD = """
import sys
from app.core import metrics
metrics.TASK_OUTCOMES.labels(task="t", outcome="ok").inc(int(sys.argv[1]))
metrics.STAGE_BATCH_DURATION.labels(stage="pii", outcome="ok").observe(0.2)
"""
_SCRAPE = """
from app.ops import metrics
print(metrics.scrape(levels=False).decode())
"""


def test_multiprocess_mode_merges_every_process(tmp_path):
    # What production does: separate processes (uvicorn workers, Celery pool children) write into one
    # PROMETHEUS_MULTIPROC_DIR; a scrape from any of them sums them all.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    for n in ("2", "3"):
        subprocess.run([sys.executable, "-c", _RECORD, n], cwd=ROOT, env=env, check=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", _SCRAPE], cwd=ROOT, env=env, check=True, timeout=120,
                         capture_output=True, text=True).stdout
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    assert _value(fams, "pedigree_task_outcomes", "pedigree_task_outcomes_total", task="t", outcome="ok") == 5
    assert _value(fams, "pedigree_stage_batch_duration_seconds", "pedigree_stage_batch_duration_seconds_count",
                  stage="pii") == 2
    assert len(list((tmp_path / "prom").glob("*.db"))) >= 2


def _exported_names() -> set[str]:
    names = set()
    for obj in vars(core_metrics).values():
        if hasattr(obj, "_name") and hasattr(obj, "_type"):
            base = obj._name
            names |= {base, base + "_total", base + "_count", base + "_sum", base + "_bucket"}
    names |= {name for name, _, _ in ops_metrics._GAUGES.values()}
    return names | {"pedigree_celery_queue_length", "pedigree_metrics_levels_up"}


def test_alert_rules_and_dashboard_name_only_exported_series():
    exported = _exported_names()
    for path in (ROOT / "deploy/prometheus/alerts.yml", ROOT / "deploy/grafana/pedigree.json"):
        used = set(re.findall(r"pedigree_[a-z0-9_]+", path.read_text())) - {"pedigree_overview"}
        assert used and used <= exported, (path.name, used - exported)


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; scripts/ensure-services.sh installs it)")
    deploy = ROOT / "deploy" / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=deploy, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=deploy, capture_output=True, text=True,
                           check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
