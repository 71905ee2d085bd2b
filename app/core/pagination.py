"""Keyset pagination: a page is the rows after (or before) the last key of the previous one, so a page
never shifts when rows are added meanwhile, and its cost does not grow with the page number."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from app.core.errors import ValidationFailed

T = TypeVar("T")


def encode_cursor(value: uuid.UUID) -> str:
    """The opaque `next_cursor` for a UUID key."""
    return base64.urlsafe_b64encode(value.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise ValidationFailed("invalid cursor", details=[{"field": "cursor", "code": "invalid",
                                                           "message": "use next_cursor from a previous page"}]) from None


def page(rows: Sequence[T], limit: int, key: Callable[[T], Any] = lambda r: r.id,  # type: ignore[attr-defined]
         *, encode: Callable[[Any], Any] | None = encode_cursor) -> tuple[list[T], Any]:
    """Cut `rows`, fetched with `LIMIT limit + 1`, into the page and the next cursor (None on the last
    page): the key of the page's last row, encoded (`encode=None` hands it back as it is, e.g. an int)."""
    if len(rows) <= limit:
        return list(rows), None
    last = key(rows[limit - 1])
    return list(rows[:limit]), (encode(last) if encode is not None else last)
