"""Reading an import: split a byte stream into lines, decode each, and validate it into a `Candidate`
(or a `LineError` naming the line and field). Nothing here touches the database."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.config import get_settings
from app.core.textguard import find_bad_character
from app.examples import preference
from app.examples.formats import FieldError, content_sha256, normalize

# Metadata is the caller's free-form JSON: bounded so one line cannot make a row the JSON encoder
# refuses (it stops at 255 levels) or a megabyte of jsonb on every example.
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 64 * 1024
PROVENANCE_KEYS = ("source", "source_ref", "collected_at", "license", "legal_basis", "metadata", "tags")


@dataclass
class LineError:
    line: int
    code: str
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"line": self.line, "code": self.code, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d


@dataclass
class Candidate:
    line: int
    content: dict[str, Any]
    sha: str
    source: str
    source_ref: str | None
    collected_at: dt.datetime | None
    license: str | None
    legal_basis: str | None
    metadata: dict[str, Any]
    tags: list[str]


@dataclass
class Defaults:
    source: str | None = None
    license: str | None = None
    legal_basis: str | None = None
    # Preference imports: the line shape (app.examples.preference.SHAPES); None detects it per line.
    shape: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "license": self.license, "legal_basis": self.legal_basis}


def _parse_time(value: Any, line: int) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError("provenance.collected_at", "type", "collected_at must be an ISO 8601 string")
    try:
        ts = dt.datetime.fromisoformat(value)
    except ValueError:
        raise FieldError("provenance.collected_at", "invalid",
                         "collected_at is not an ISO 8601 date or datetime") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def _opt_str(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "source_ref":
        value = str(value)
    if not isinstance(value, str):
        raise FieldError(f"provenance.{name}", "type", f"{name} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise FieldError(f"provenance.{name}", "too_long", f"{name} is longer than {limit} characters")
    return value or None


def prepare(fmt: str, obj: Any, line: int, defaults: Defaults) -> Candidate:
    """Validate one decoded example object; raise FieldError naming the bad field."""
    s = get_settings()
    if not isinstance(obj, dict):
        raise FieldError("$", "type", f"each example must be a JSON object, got {type(obj).__name__}")
    content = normalize(fmt, obj, max_chars=s.max_field_chars, max_messages=s.max_messages)
    prov = obj.get("provenance") or {}
    if not isinstance(prov, dict):
        raise FieldError("provenance", "type", "provenance must be an object")
    unknown = set(prov) - set(PROVENANCE_KEYS)
    if unknown:
        raise FieldError(f"provenance.{min(unknown)}", "unknown",
                         f"unknown provenance field; allowed: {', '.join(PROVENANCE_KEYS)}")
    meta = prov.get("metadata") or {}
    if not isinstance(meta, dict):
        raise FieldError("provenance.metadata", "type", "metadata must be an object")
    # Keys outside the format's fields are the caller's own columns (ids, scores, labels): keep them.
    extra = {k: v for k, v in obj.items() if k not in _CONTENT_KEYS[fmt] and k != "provenance"}
    if extra:
        meta = {**extra, **meta}
    _check_metadata(meta)
    tags = prov.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise FieldError("provenance.tags", "type", "tags must be an array of strings")
    source = _opt_str(prov.get("source"), "source", 200) or defaults.source or "api"
    return Candidate(
        line=line,
        content=content,
        sha=content_sha256(content),
        source=source,
        source_ref=_opt_str(prov.get("source_ref"), "source_ref", 500),
        collected_at=_parse_time(prov.get("collected_at"), line),
        license=_opt_str(prov.get("license"), "license", 100) or defaults.license,
        legal_basis=_opt_str(prov.get("legal_basis"), "legal_basis", 100) or defaults.legal_basis,
        metadata=meta,
        tags=sorted(set(tags)),
    )


def _check_metadata(meta: dict[str, Any]) -> None:
    # Iterative, so a line nested 100,000 deep costs a loop, not the interpreter's recursion limit.
    stack: list[tuple[Any, int, str]] = [(meta, 1, "provenance.metadata")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise FieldError(path, "metadata_too_deep",
                             f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node))
    size = len(orjson.dumps(meta))
    if size > MAX_METADATA_BYTES:
        raise FieldError("provenance.metadata", "too_large",
                         f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")


_CONTENT_KEYS = {
    "chat": {"messages"},
    "instruction": {"instruction", "input", "output"},
    "completion": {"prompt", "completion"},
    "preference": {"prompt", "chosen", "rejected"},
}


@dataclass(frozen=True)
class TooLarge:
    """Stands in for a line the parser dropped because it passed the size limit."""

    limit: int


def prepare_line(fmt: str, obj: Any, line: int, defaults: Defaults) -> list[Candidate]:
    """One decoded line as its examples: one, except an OpenAssistant tree, which gives a pair per two
    ranked siblings. Raises FieldError naming the field."""
    if fmt != "preference":
        return [prepare(fmt, obj, line, defaults)]
    return [prepare(fmt, o, line, defaults) for o in preference.expand(obj, defaults.shape)]


def parse_line(raw: bytes | TooLarge, line: int, fmt: str, defaults: Defaults) -> list[Candidate] | LineError:
    s = get_settings()
    if isinstance(raw, TooLarge):
        return LineError(line, "too_large", f"line is longer than the limit of {raw.limit} bytes")
    if len(raw) > s.max_example_bytes:
        return LineError(line, "too_large", f"line is {len(raw)} bytes; the limit is {s.max_example_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as ue:
            return LineError(line, "invalid_utf8", f"not valid UTF-8 at byte {ue.start}")
        if "surrogate" in str(e):  # orjson refuses lone surrogates, which PostgreSQL could not store
            return LineError(line, "invalid_character", "the line holds a lone UTF-16 surrogate escape")
        return LineError(line, "invalid_json", f"not valid JSON: {e}")
    # The escape is the only way a NUL gets into a decoded line (a raw NUL byte is invalid JSON),
    # so the walk runs only for the rare line that spells it.
    if b"\\u0000" in raw:
        where = find_bad_character(obj)
        if where is not None:
            return LineError(line, "invalid_character",
                             f"{where} contains a NUL character, which cannot be stored", where)
    try:
        return prepare_line(fmt, obj, line, defaults)
    except FieldError as fe:
        return LineError(line, fe.code, fe.message, fe.field)


class LineParser:
    """Splits a byte stream into lines without holding more than one partial line.

    A partial line is kept as a list of chunks and joined once, when its newline arrives: joining on
    every chunk re-copied a 96 MB line without a newline some 6,000 times before refusing it. A line
    that passes `limit` is dropped as soon as it does (a `TooLarge` stands in for it) and the rest
    of it is skipped up to its newline."""

    def __init__(self, limit: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False
        self.limit = limit
        self.line_no = 0

    def feed(self, chunk: bytes) -> list[tuple[int, bytes | TooLarge]]:
        out: list[tuple[int, bytes | TooLarge]] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self._extend(chunk[start:] if start else chunk, out)
                return out
            if self._skipping:
                self._skipping = False
            else:
                piece = chunk[start:nl]
                if self._parts:
                    self._parts.append(piece)
                    piece = b"".join(self._parts)
                self._parts, self._size = [], 0
                self._emit(piece, out)
            start = nl + 1

    def close(self) -> list[tuple[int, bytes | TooLarge]]:
        out: list[tuple[int, bytes | TooLarge]] = []
        if not self._skipping and self._parts:
            rest = b"".join(self._parts)
            self._emit(rest, out)
        self._parts, self._size, self._skipping = [], 0, False
        return out

    def _extend(self, rest: bytes, out: list[tuple[int, bytes | TooLarge]]) -> None:
        if self._skipping or not rest:
            return
        self._parts.append(rest)
        self._size += len(rest)
        if self.limit is not None and self._size > self.limit + 1:  # +1: a CR before the newline
            self.line_no += 1
            out.append((self.line_no, TooLarge(self.limit)))
            self._parts, self._size, self._skipping = [], 0, True

    def _emit(self, p: bytes, out: list[tuple[int, bytes | TooLarge]]) -> None:
        self.line_no += 1
        if p.endswith(b"\r"):
            p = p[:-1]
        if p and not p.isspace():  # blank lines are skipped but counted, so numbers match editors
            out.append((self.line_no, p))
