"""What validated an example, as versions a later process can compare: the PII engine, the spaCy model,
and the recognizer set (docs/governance.md, "Revalidation").

A recognizer's fingerprint is the sha256 of its module's source and its configuration (patterns, deny
lists, context words, entities, regions, word lists): a recognizer changed by a code upgrade or by the
engine's settings gets a new fingerprint, its siblings keep theirs. The set's version is the sha256 over
its members; `pii_recognizer_sets` keeps the members by version, so the diff between the set that validated
an example and the current one names the recognizers that changed (app/pii/rescrub.py's prefilter reads it).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.sql import insert_ignore
from app.models.validation import PiiRecognizerSet

# Bump when the scrub's own rules (the passes after the recognizers, the operators) change what it writes:
# the passes are no recognizer, so their change would otherwise go unseen. A member of every set, never
# prefiltered: its change re-scrubs everything.
SCRUB_RULES = "pedigree.scrub_rules"
SCRUB_RULES_VERSION = "2"  # 2: #15 fourth round (named features and teams kept as places, def suites are code)


@lru_cache(maxsize=64)
def _module_sha(module_name: str) -> str:
    module = sys.modules.get(module_name)
    try:
        source = inspect.getsource(module) if module is not None else module_name
    except (OSError, TypeError):
        source = module_name
    return hashlib.sha256(source.encode()).hexdigest()


def _plain(value: Any, depth: int = 0) -> Any:
    """A deterministic stand-in for a recognizer's attribute: primitives as they are, containers sorted,
    patterns by their text, anything else by its type (never its address)."""
    if depth > 4:
        return type(value).__name__
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        if all(isinstance(v, str) for v in value):  # word lists (the gazetteer's names): hashed, fast
            return {"strings": hashlib.sha256("\n".join(sorted(value)).encode()).hexdigest()}
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))}
    if hasattr(value, "regex") and hasattr(value, "score"):  # presidio Pattern
        return {"regex": value.regex, "score": value.score, "name": getattr(value, "name", "")}
    if hasattr(value, "pattern") and hasattr(value, "flags"):  # a compiled regex
        return {"pattern": value.pattern, "flags": int(value.flags)}
    return type(value).__name__


# Per-instance identities (Presidio's `_id` holds the object's address): no part of what it finds.
_NOT_STATE = frozenset({"_id", "id"})


def recognizer_fingerprint(rec: Any) -> str:
    cls = type(rec)
    state = {k: _plain(v) for k, v in sorted(vars(rec).items()) if k not in _NOT_STATE}
    blob = json.dumps({"class": f"{cls.__module__}.{cls.__qualname__}", "module": _module_sha(cls.__module__),
                       "state": state}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def recognizer_members(engine: Any) -> dict[str, str]:
    """{name: fingerprint} of the engine's registry, which is what analyzes every text (the policy's own
    recognizers are the PII policy's, whose hash the scrub records apart)."""
    members: dict[str, str] = {SCRUB_RULES: SCRUB_RULES_VERSION}
    for rec in engine.analyzer.registry.recognizers:
        fp = recognizer_fingerprint(rec)
        if rec.name in members:  # two instances under one name (regions, languages): one member
            fp = hashlib.sha256((members[rec.name] + fp).encode()).hexdigest()
        members[rec.name] = fp
    return members


def set_version(members: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(members, sort_keys=True).encode()).hexdigest()


def versions(engine: Any) -> dict[str, Any]:
    """The engine's versions as a validation record holds them (computed once per engine)."""
    cached = getattr(engine, "_pedigree_versions", None)
    if cached is None:
        members = recognizer_members(engine)
        cached = {"pii_engine": engine.info.engine, "spacy_model": engine.info.model,
                  "recognizers": set_version(members), "members": members}
        engine._pedigree_versions = cached
    return cached


def register(session: Session, engine: Any) -> dict[str, Any]:
    """Store the engine's recognizer set by its version (once; idempotent) and return the versions."""
    v = versions(engine)
    insert_ignore(session, PiiRecognizerSet.__table__, [{"version": v["recognizers"], "recognizers": v["members"]}],
                  index_elements=["version"])
    return v


def members_of(session: Session, version_ids: list[str]) -> dict[str, dict[str, str]]:
    if not version_ids:
        return {}
    rows = session.execute(select(PiiRecognizerSet.version, PiiRecognizerSet.recognizers)
                           .where(PiiRecognizerSet.version.in_(version_ids)))
    return {r.version: r.recognizers for r in rows}


def diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k])}
