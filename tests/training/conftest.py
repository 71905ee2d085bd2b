from __future__ import annotations

import json
from pathlib import Path

import pytest


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


def dumps(x) -> str:
    return json.dumps(x, sort_keys=True)
