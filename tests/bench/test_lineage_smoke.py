"""bench.lineage end to end at a smoke size on PostgreSQL: it writes its rows by COPY, beside the app's
own code, so a schema change (priv03's workspace on datasets, priv06's on model names) or a new read of
those rows (the erasure re-test opening the vault) broke it silently until someone ran it by hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def test_lineage_bench_runs_scoped_and_erases_what_it_should() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEDIGREE_")}
    env["PEDIGREE_BENCH_PG"] = PG_ADMIN_URL
    # 50 runs x 500 examples: every step of the default run (build, scoped lookups, plans, erasure over
    # HTTP, replay) on 25,000 lineage rows.
    r = subprocess.run([sys.executable, "-m", "bench.lineage", "--scale", "0", "--per-run", "500",
                        "--samples", "20", "--license-samples", "2"],
                       check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    data, fig = out["data"], out["figures"]
    assert data["lineage_rows"] == 50 * 500
    assert fig["erasure_checks_ok"] is True
    assert fig["erasure_examples"] == data["subject_examples"] == 500
    assert fig["erasure_model_versions"] == data["subject_model_versions"] > 0
    assert fig["erasure_aliases"] == ["assistant-3@staging"]
    # The member auditor's answer (from its workspace's lineage rows) is admin's (from the counts).
    assert fig["models_by_license_versions"] == fig["models_by_license_admin_versions"] > 0
    assert set(out["targets"]) <= set(fig)
