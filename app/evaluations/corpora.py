"""Public corpora a suite scores, configured by path rather than shipped: CrowS-Pairs for `bias`
(CC BY-SA 4.0, share-alike, so it stays out of Pedigree's own files; docs/bias.md)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from app.core.errors import ValidationFailed

CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


class BiasCorpusMissing(ValidationFailed):
    code = "bias_corpus_missing"

    def __init__(self, configured: str | None, why: str | None = None) -> None:
        why = why or (f"PEDIGREE_CROWS_PAIRS_PATH={configured} is not a file" if configured else
                      "PEDIGREE_CROWS_PAIRS_PATH is not set")
        super().__init__(f"the bias suite needs CrowS-Pairs (crows_pairs_anonymized.csv): {why}",
                         details=[{"field": "suites", "code": self.code, "message": why}])


def crows_pairs_path() -> Path:
    """The configured CrowS-Pairs CSV, or BiasCorpusMissing naming the setting."""
    from app.core.config import get_settings

    configured = get_settings().crows_pairs_path
    if not configured or not Path(configured).is_file():
        raise BiasCorpusMissing(configured)
    path = Path(configured)
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    missing = [c for c in CROWS_COLUMNS if c not in header]
    if missing:
        raise BiasCorpusMissing(configured, f"{path} lacks the column(s) {', '.join(missing)}")
    return path


def crows_pairs() -> list[dict[str, Any]]:
    """CrowS-Pairs' rows as the bias suite's JSON lines: the four columns it scores plus the row id."""
    with open(crows_pairs_path(), newline="", encoding="utf-8") as f:
        return [{"pair_id": row.get("") or str(i), **{c: row[c] for c in CROWS_COLUMNS}}
                for i, row in enumerate(csv.DictReader(f))]
