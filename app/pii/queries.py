"""PII's read API for other domains: what scrubbing found and which engine model ran, over a set of
examples given as a select, each one grouped statement (no per-row Python)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, func, select, union
from sqlalchemy.orm import Session

from app.core.sql import any_of, in_chunks, is_pg
from app.models.pii import PiiFinding, PiiScrub
from app.pii.paths import get_path, set_path
from app.pii.tokens import view_words


def scrub_models(session: Session, examples: Select) -> list[Any]:
    """(model, examples scrubbed with it), most used first."""
    n = func.count(PiiScrub.example_id.distinct())
    return session.execute(select(PiiScrub.model, n).where(PiiScrub.example_id.in_(examples))
                           .group_by(PiiScrub.model).order_by(n.desc())).all()


def count_handled_by_model(session: Session, examples: Select, model: str) -> int:
    """How many of the examples a scrub or a finding records as handled by `model`."""
    hit = union(select(PiiScrub.example_id).where(PiiScrub.model == model, PiiScrub.example_id.in_(examples)),
                select(PiiFinding.example_id).where(PiiFinding.model == model, PiiFinding.example_id.in_(examples)))
    return session.scalar(select(func.count()).select_from(hit.subquery())) or 0


def findings_by_type_and_operator(session: Session, examples: Select) -> list[Any]:
    """(entity_type, operator, findings, of them marked false positive by a reviewer), most first."""
    n = func.count()
    return session.execute(
        select(PiiFinding.entity_type, PiiFinding.operator, n, func.count().filter(PiiFinding.verdict == "false_positive"))
        .where(PiiFinding.example_id.in_(examples))
        .group_by(PiiFinding.entity_type, PiiFinding.operator).order_by(n.desc())).all()


def findings_by_type(session: Session, examples: Select) -> dict[str, int]:
    """{entity_type: findings} over the examples."""
    rows = session.execute(select(PiiFinding.entity_type, func.count()).where(PiiFinding.example_id.in_(examples))
                           .group_by(PiiFinding.entity_type).order_by(PiiFinding.entity_type))
    return {t: n for t, n in rows}


def count_with_findings(session: Session, examples: Select) -> int:
    """How many of the examples have at least one finding."""
    return session.scalar(select(func.count(PiiFinding.example_id.distinct()))
                          .where(PiiFinding.example_id.in_(examples))) or 0


def dedup_views(session: Session, contents: Mapping[uuid.UUID, Any]) -> dict[uuid.UUID, Any]:
    """Dedup's comparison view of scrubbed revisions: {revision id: content} in, the same content with
    every scrubbed span that has a token replaced by that token's word out (only for revisions that have
    one). Tokens are keyed hashes, so the view holds no raw value, and it is built when asked, never
    stored. A span whose offsets do not fit the text (content changed under it) is left as scrubbed."""
    pg = is_pg(session)
    spans: dict[uuid.UUID, list[tuple[str, int, int, str, int | None]]] = {}
    for chunk in in_chunks(list(contents), pg=pg):
        rows = session.execute(
            select(PiiFinding.revision_id, PiiFinding.field_path, PiiFinding.scrubbed_start,
                   PiiFinding.scrubbed_end, PiiFinding.value_token, PiiFinding.value_words)
            .where(any_of(PiiFinding.revision_id, chunk, pg=pg), PiiFinding.value_token.is_not(None))
        )
        for rid, path, s, e, tok, words in rows:
            spans.setdefault(rid, []).append((path, s, e, tok, words))
    out: dict[uuid.UUID, Any] = {}
    for rid, found in spans.items():
        content = copy.deepcopy(contents[rid])
        # Right to left within a field, so earlier offsets stay valid.
        for path, s, e, tok, words in sorted(found, key=lambda x: (x[0], -x[1])):
            try:
                text = get_path(content, path)
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if isinstance(text, str) and 0 <= s <= e <= len(text):
                set_path(content, path, text[:s] + view_words(tok, words) + text[e:])
        out[rid] = content
    return out
