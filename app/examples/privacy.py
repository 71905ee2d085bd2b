"""What of an example a caller may see before and after the scrub (docs/pii.md, "Who sees what").

* Text: an example that has not yet been through the `pii` stage may hold raw PII in its current revision,
  so every view withholds that content (`content: null, content_withheld: "pii_pending"`) until it has.
* Provenance (`source_ref`, metadata values, tags) is never scrubbed: those fields are identifiers the caller
  chose, and a ref like `ticket-for-jane@example.com` is PII. Roles without a raw grant (everyone but admin)
  see each value as `hmac:<16 hex>`, a keyed HMAC-SHA256 (a tag keeps its facet: `lang:hmac:…`): equal
  values give equal pseudonyms, so joins, grouping and "are these the same ref" still work, and without the
  key they cannot be reversed by trying candidate values.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Any

import orjson

from app.core.auth import RAW_PII_READERS, Actor
from app.core.config import get_settings
from app.pipeline import stages

PII_PENDING = "pii_pending"
PSEUDONYM_PREFIX = "hmac:"
# Roles that read provenance as stored: the grant that reads raw text from the vault (admin, and whoever
# app/core/auth.py's RAW_PII_READERS names; nobody else today).
RAW_PROVENANCE_ROLES = ("admin", *RAW_PII_READERS)


def content_withheld(stage: str | None, status: str) -> str | None:
    """Why the current revision's content may not be shown (None: it may)."""
    if stage in stages.pii_pending_stages() and status != "erased":
        return PII_PENDING
    return None


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    # Its own label: the provenance pseudonym key must not equal the cookie key or the scrub's hash key, so a
    # pseudonym shown here cannot be matched against a `<EMAIL_ADDRESS:...>` hash in scrubbed text.
    return hmac.new(secret.encode(), b"pedigree-provenance-pseudonym-v1", hashlib.sha256).digest()


def pseudonym(value: Any) -> str:
    """`hmac:<16 hex>` for one provenance value (strings as they are; other scalars as canonical JSON)."""
    raw = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    digest = hmac.new(_key(get_settings().secret_key), raw.encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:16]


def sees_raw_provenance(actor: Actor | None) -> bool:
    return actor is not None and actor.role in RAW_PROVENANCE_ROLES


def mask_value(value: Any) -> Any:
    """Every leaf value pseudonymised; keys, nesting, nulls and booleans kept (they are the caller's schema,
    not data about a person)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    return pseudonym(value)


def mask_tag(tag: str) -> str:
    """`lang:en` -> `lang:hmac:…`: the part before the first colon names a facet (what `stratify_by` groups
    on), the rest is the value; a tag without a colon is all value."""
    facet, sep, _ = tag.partition(":")
    return f"{facet}:{pseudonym(tag)}" if sep else pseudonym(tag)


def source_ref_for(actor: Actor | None, source_ref: str | None) -> str | None:
    if source_ref is None or sees_raw_provenance(actor):
        return source_ref
    return pseudonym(source_ref)


def provenance_fields(actor: Actor | None, *, source_ref: str | None, metadata: Any, tags: Any) -> dict[str, Any]:
    if sees_raw_provenance(actor):
        return {"source_ref": source_ref, "metadata": metadata, "tags": tags}
    return {"source_ref": source_ref_for(actor, source_ref), "metadata": mask_value(metadata or {}),
            "tags": [mask_tag(t) for t in tags or []]}
