"""The quality stage: cheap, deterministic flags on a revision's text, stored on the revision.

It lives with examples, not with the pipeline: it reads only an example's current revision and its
dataset's rules, writes `ExampleRevision.quality`, and the example view (`service.view`) is its only
reader. The pipeline runs it because app.wiring hands `quality_handler` to the stage list.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from app.examples.formats import text_fields
from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision

# C0/C1 controls other than tab and newline: almost always extraction debris.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WORD = re.compile(r"\w+", re.UNICODE)

DEFAULT_RULES = {"min_chars": 2, "max_chars": 50_000, "max_approx_tokens": 16_000}


def _script(text: str) -> str | None:
    """Dominant script of the letters in text (LATIN, CYRILLIC, CJK, ...), or None."""
    counts: dict[str, int] = {}
    for ch in text[:2000]:
        if ch.isalpha():
            try:
                name = unicodedata.name(ch)
            except ValueError:
                continue
            script = name.split(" ", 1)[0]
            if script in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"):
                script = "CJK"
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def check(fmt: str, content: dict[str, Any], rules: dict[str, Any] | None = None) -> dict[str, Any]:
    r = {**DEFAULT_RULES, **(rules or {})}
    fields = text_fields(fmt, content)
    chars = sum(len(t) for _, t in fields)
    # ~4 characters per token for English BPE vocabularies; good enough to flag outliers.
    approx_tokens = (chars + 3) // 4
    flags: list[dict[str, Any]] = []
    if chars < r["min_chars"]:
        flags.append({"code": "too_short", "message": f"{chars} characters in all"})
    if chars > r["max_chars"]:
        flags.append({"code": "too_long", "message": f"{chars} characters; rule max {r['max_chars']}"})
    if approx_tokens > r["max_approx_tokens"]:
        flags.append({"code": "too_many_tokens", "message": f"~{approx_tokens} tokens"})
    for path, text in fields:
        if not text.strip():
            flags.append({"code": "empty_field", "field": path, "message": "empty or whitespace only"})
        if _CONTROL.search(text):
            flags.append({"code": "control_characters", "field": path, "message": "contains control characters"})
    if fmt == "chat":
        seen: set[tuple[str, str]] = set()
        for i, m in enumerate(content["messages"]):
            key = (m["role"], m["content"])
            if key in seen:
                flags.append({"code": "repeated_turn", "field": f"messages[{i}].content",
                              "message": "same role and text as an earlier turn"})
            seen.add(key)
    if fmt == "instruction" and content.get("output") and content["output"] == content.get("instruction"):
        flags.append({"code": "output_repeats_instruction", "field": "output", "message": "output equals instruction"})
    if fmt == "preference" and content["chosen"].strip() == content["rejected"].strip():
        flags.append({"code": "identical_preference", "field": "rejected", "message": "chosen equals rejected"})
    # Language mismatch, cheaply: a prompt and its answer written in different scripts.
    scripts = {path: _script(text) for path, text in fields if len(_WORD.findall(text)) >= 3}
    distinct = {s for s in scripts.values() if s}
    if len(distinct) > 1:
        flags.append({"code": "script_mismatch", "message": "fields written in different scripts: "
                      + ", ".join(sorted(distinct))})
    return {"chars": chars, "approx_tokens": approx_tokens,
            "script": _script(" ".join(t for _, t in fields)), "flags": flags}


def quality_handler(*, session: Session, example_ids: list[uuid.UUID]) -> None:
    rows = session.execute(
        select(ExampleRevision.id, ExampleRevision.content, Dataset.format, Dataset.quality_rules)
        .join(Example, Example.current_revision_id == ExampleRevision.id)
        .join(Dataset, Dataset.id == Example.dataset_id)
        .where(Example.id.in_(example_ids))
    ).all()
    updates = [{"rid": r.id, "quality": check(r.format, r.content, r.quality_rules)} for r in rows]
    if updates:
        t = ExampleRevision.__table__
        session.execute(update(t).where(t.c.id == bindparam("rid")).values(quality=bindparam("quality")), updates)
