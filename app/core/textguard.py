"""Refuse request text that PostgreSQL cannot store, with a 422 naming the field, before any of it
reaches a query.

PostgreSQL's text types reject NUL (`\\u0000`) and psycopg cannot encode a lone UTF-16 surrogate
(`\\ud800`, which Python's json module decodes without complaint), so either one in a path, a query
parameter or a JSON or form body used to end as a 500 after the request had started writing. The
streamed JSONL import is not buffered here: its lines are checked one by one (`invalid_character`
per line, the other lines still stored).

A `/v1/` request without credentials passes through untouched, so it is answered 401 by the auth
dependency before anything reads its parameters, whatever they hold.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CODE = "invalid_character"
# Bodies above this are not buffered for the check: every endpoint that takes one refuses it anyway.
MAX_GUARDED_BODY = 64 * 1024 * 1024
# Cheap pre-check on raw JSON bytes: a NUL or surrogate escape, a raw NUL, or UTF-8-encoded surrogate
# bytes (json.loads decodes those with surrogatepass). Valid surrogate pairs also match and are
# then cleared by the exact check on the decoded value.
_SUSPECT_JSON = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\x00|\xed[\xa0-\xbf]")


def has_bad_char(value: str) -> bool:
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # only lone surrogates fail to encode
        return True
    return False


def find_bad_character(obj: Any, path: str = "") -> str | None:
    """Path of the first string (or key) holding a character PostgreSQL cannot store in text: NUL,
    or a lone UTF-16 surrogate. None if there is none."""
    stack: list[tuple[Any, str]] = [(obj, path)]
    while stack:
        node, here = stack.pop()
        if isinstance(node, str):
            if has_bad_char(node):
                return here or "$"
        elif isinstance(node, dict):
            for k, v in node.items():
                sub = f"{here}.{k}" if here else str(k)
                if isinstance(k, str) and has_bad_char(k):
                    return here or "$"  # the key itself cannot be echoed
                stack.append((v, sub))
        elif isinstance(node, list):
            stack.extend((v, f"{here}[{i}]") for i, v in enumerate(node))
    return None


def refusal(field: str) -> dict[str, Any]:
    message = f"{field} contains a character that cannot be stored (NUL or a lone UTF-16 surrogate)"
    return {"error": {"code": CODE, "message": message,
                      "details": [{"field": field, "code": CODE, "message": message}]}}


def _bad_form_field(raw: str) -> str | None:
    for name, value in parse_qsl(raw, keep_blank_values=True):
        if has_bad_char(name):
            return "query"
        if has_bad_char(value):
            return name
    return None


class TextGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope.get("headers", ()) if k in (b"authorization", b"cookie", b"content-type")}
        path = scope.get("path", "")
        if path.startswith("/v1/") and b"authorization" not in headers and b"cookie" not in headers:
            await self.app(scope, receive, send)
            return
        field = None
        if has_bad_char(path):
            field = "path"
        else:
            qs = scope.get("query_string", b"")
            if b"%00" in qs:
                field = _bad_form_field(qs.decode("latin-1"))
        if field is not None:
            await JSONResponse(refusal(field), status_code=422)(scope, receive, send)
            return
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = ctype == b"application/json" or ctype.endswith(b"+json")
        if not (is_json or ctype == b"application/x-www-form-urlencoded"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more, disconnected = 0, True, None
        while more:
            message = await receive()
            if message["type"] != "http.request":
                disconnected = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_GUARDED_BODY:
                break
        body = b"".join(chunks)
        if not more and disconnected is None:
            field = _bad_json_field(body) if is_json else (
                _bad_form_field(body.decode("latin-1")) if b"%00" in body else None)
            if field is not None:
                await JSONResponse(refusal(field), status_code=422)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected is not None and not body:
                    return disconnected
                return {"type": "http.request", "body": body, "more_body": more}
            if disconnected is not None:
                return disconnected
            return await receive()

        await self.app(scope, replay, send)


def _bad_json_field(body: bytes) -> str | None:
    if not _SUSPECT_JSON.search(body):
        return None
    try:
        obj = json.loads(body)  # the parser FastAPI uses, so the check sees what the endpoint would
    except ValueError:
        return None  # not JSON: the endpoint answers that itself
    return find_bad_character(obj)
