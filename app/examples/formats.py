"""Task formats: validation, normalisation and the canonical content hash.

Normalisation is deliberately small and predictable (Unicode NFC, CRLF→LF, trimmed ends) so the
same text always hashes the same, whichever tool exported it. The hash is sha256 over the canonical
JSON (sorted keys, compact separators, UTF-8): the trainer and outside tools recompute it from an
export without importing this module.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

FORMATS = ("chat", "instruction", "completion", "preference")
CONTENT_FIELDS = {
    "chat": ("messages",),
    "instruction": ("instruction", "input", "output"),
    "completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
}
CHAT_ROLES = ("system", "user", "assistant")


@dataclass
class FieldError(Exception):
    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


def canonical_json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def content_sha256(content: Any) -> str:
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _text(value: Any, field: str, *, max_chars: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FieldError(field, "type", f"{field} must be a string, got {type(value).__name__}")
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    value = value.strip()
    if not value and not allow_empty:
        raise FieldError(field, "empty", f"{field} is empty or whitespace only")
    if len(value) > max_chars:
        raise FieldError(field, "too_long", f"{field} has {len(value)} characters; the limit is {max_chars}")
    return value


def _turn(m: Any, i: int, path: str, expected: str) -> tuple[str, str]:
    """One turn of a conversation (a chat example's messages, a preference prompt): its role, checked
    against the order (a system message first if any, then user/assistant alternating), and the role
    the next turn must have."""
    if not isinstance(m, dict):
        raise FieldError(path, "type", f"{path} must be an object with role and content")
    role = m.get("role")
    if role not in CHAT_ROLES:
        raise FieldError(f"{path}.role", "invalid", f"{path}.role must be one of {', '.join(CHAT_ROLES)}")
    if role == "system":
        if i != 0:
            raise FieldError(f"{path}.role", "order", "a system message may only come first")
        return role, expected
    if role != expected:
        raise FieldError(f"{path}.role", "order",
                         f"{path} is {role!r} but turns must alternate user/assistant; expected {expected!r}")
    return role, "assistant" if role == "user" else "user"


def normalize(fmt: str, obj: dict[str, Any], *, max_chars: int = 100_000, max_messages: int = 256) -> dict[str, Any]:
    """Return the normalised content of one example, or raise FieldError naming the field."""
    if fmt == "chat":
        messages = obj.get("messages")
        if messages is None:
            raise FieldError("messages", "missing", "messages is required for the chat format")
        if not isinstance(messages, list) or not messages:
            raise FieldError("messages", "type", "messages must be a non-empty array")
        if len(messages) > max_messages:
            raise FieldError("messages", "too_long", f"{len(messages)} messages; the limit is {max_messages}")
        out = []
        expected = "user"
        for i, m in enumerate(messages):
            path = f"messages[{i}]"
            role, expected = _turn(m, i, path, expected)
            msg: dict[str, Any] = {"role": role, "content": _text(m.get("content"), f"{path}.content", max_chars=max_chars)}
            # OpenAI's per-message training weight (0/1) is the one extra key trainers understand.
            if "weight" in m:
                if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                    raise FieldError(f"{path}.weight", "invalid", "weight must be 0 or 1")
                msg["weight"] = m["weight"]
            out.append(msg)
        if out[-1]["role"] != "assistant":
            raise FieldError(f"messages[{len(out) - 1}].role", "order",
                             "the last message must be from the assistant (there is nothing to train on)")
        return {"messages": out}
    if fmt == "instruction":
        return {
            "instruction": _text(_required(obj, "instruction"), "instruction", max_chars=max_chars),
            "input": _text(obj.get("input", ""), "input", max_chars=max_chars, allow_empty=True),
            "output": _text(_required(obj, "output"), "output", max_chars=max_chars),
        }
    if fmt == "completion":
        return {
            "prompt": _text(_required(obj, "prompt"), "prompt", max_chars=max_chars, allow_empty=True),
            "completion": _text(_required(obj, "completion"), "completion", max_chars=max_chars),
        }
    if fmt == "preference":
        # Identical answers are stored (the quality stage flags them and DPO snapshots leave them out),
        # so a reviewer sees the pair instead of the importer silently losing it.
        return {
            "prompt": _prompt(_required(obj, "prompt"), max_chars=max_chars, max_messages=max_messages),
            "chosen": _text(_required(obj, "chosen"), "chosen", max_chars=max_chars),
            "rejected": _text(_required(obj, "rejected"), "rejected", max_chars=max_chars),
        }
    raise FieldError("format", "invalid", f"unknown format {fmt!r}")


def _prompt(value: Any, *, max_chars: int, max_messages: int) -> str | list[dict[str, str]]:
    """A preference prompt: a string, or the conversation before the answers (a system message first
    if any, user/assistant alternating, ending with the user). A conversation of one user turn is
    stored as its string, so the same comparison hashes the same from every tool's shape."""
    if isinstance(value, str):
        return _text(value, "prompt", max_chars=max_chars)
    if not isinstance(value, list) or not value:
        raise FieldError("prompt", "type", "prompt must be a string or a non-empty array of messages")
    if len(value) > max_messages:
        raise FieldError("prompt", "too_long", f"{len(value)} messages; the limit is {max_messages}")
    out = []
    expected = "user"
    for i, m in enumerate(value):
        path = f"prompt[{i}]"
        role, expected = _turn(m, i, path, expected)
        out.append({"role": role, "content": _text(m.get("content"), f"{path}.content", max_chars=max_chars)})
    if out[-1]["role"] != "user":
        raise FieldError(f"prompt[{len(out) - 1}].role", "order", "a prompt conversation must end with the user")
    if len(out) == 1:
        return out[0]["content"]
    return out


def prompt_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _required(obj: dict[str, Any], field: str) -> Any:
    if field not in obj:
        raise FieldError(field, "missing", f"{field} is required")
    return obj[field]


def text_fields(fmt: str, content: dict[str, Any]) -> list[tuple[str, str]]:
    """Every text field as (path, text), in a stable order. PII scrubbing and dedup walk this."""
    if fmt == "chat":
        return [(f"messages[{i}].content", m["content"]) for i, m in enumerate(content["messages"])]
    if fmt == "preference" and isinstance(content.get("prompt"), list):
        return [*((f"prompt[{i}].content", m["content"]) for i, m in enumerate(content["prompt"])),
                ("chosen", content["chosen"]), ("rejected", content["rejected"])]
    return [(f, content[f]) for f in CONTENT_FIELDS[fmt] if f in content]


def set_text(content: dict[str, Any], path: str, text: str) -> None:
    """Write `text` at a path produced by text_fields (content is modified in place)."""
    for key in ("messages", "prompt"):
        if path.startswith(key + "["):
            idx = int(path[len(key) + 1:path.index("]")])
            content[key][idx]["content"] = text
            return
    content[path] = text


def trainable_text(fmt: str, content: dict[str, Any]) -> str:
    return "\n".join(t for _, t in text_fields(fmt, content))
