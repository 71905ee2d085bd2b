from __future__ import annotations

import json
from pathlib import Path

import pytest

# A deployment's own identifier (docs/governance.md): adding this recognizer is the recognizer change.
TOKEN = "ACME-7QX2K9L0P3ZT"
ACME = [{"name": "acme_token", "entity_type": "SECRET", "patterns": [{"regex": r"\bACME-[A-Z0-9]{12}\b",
                                                                        "score": 0.9}]}]


@pytest.fixture
def acme_file(tmp_path: Path) -> Path:
    p = tmp_path / "recognizers.json"
    p.write_text(json.dumps(ACME))
    return p


def deploy_recognizers(monkeypatch: pytest.MonkeyPatch, path: Path | None) -> None:
    """What a deploy with (or without) the extra recognizers does to this process: new settings, a new
    engine (the engine cache is keyed by the settings)."""
    from app.core.config import reset_settings

    if path is None:
        monkeypatch.delenv("PEDIGREE_PII_EXTRA_RECOGNIZERS", raising=False)
    else:
        monkeypatch.setenv("PEDIGREE_PII_EXTRA_RECOGNIZERS", str(path))
    reset_settings()
