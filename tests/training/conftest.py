from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.snapshots.helpers import approved_dataset, export_records, freeze


@pytest.fixture
def artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("PEDIGREE_ARTIFACT_ROOT", str(root))
    from app.core.config import reset_settings

    reset_settings()
    return root


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records what would be sent to the `train` queue instead of training in-process, so API tests
    drive the trainer's protocol by hand."""
    from app.core import jobs

    sent: list[tuple] = []
    monkeypatch.setitem(jobs.LOCAL_HANDLERS, "pedigree.train.run", lambda *a: sent.append(a))
    return sent


@pytest.fixture
def base_model(tmp_path: Path) -> str:
    """A folder that passes the API's local check (the trainer is not run in these tests)."""
    p = tmp_path / "base-model"
    p.mkdir()
    (p / "config.json").write_text("{}")
    return str(p)


def snapshot(api, n: int = 12) -> tuple[dict, list[dict]]:
    ds, _ = approved_dataset(api, n=n)
    snap = freeze(api, ds, validation_fraction=0.25, seed="7")
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


def dumps(x) -> str:
    return json.dumps(x, sort_keys=True)
