"""Log hygiene and shape: an access log line must not carry what the API itself pseudonymises, and every
line is one JSON object carrying the request id (below).

Query strings hold caller values (`?source_ref=ticket-for-jane@example.com`, `?reviewer=`, `?tag=`), and
uvicorn's access log writes the path with its query string verbatim. The filter keeps the path and the
parameter names, which is what an operator reads an access log for, and replaces every value with `*`.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import logging
import logging.handlers
import re
import uuid as _uuid
from urllib.parse import parse_qsl

import orjson

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "*"


def redact_query(path: str) -> str:
    base, sep, query = path.partition("?")
    if not sep:
        return path
    names = [k for k, _ in parse_qsl(query, keep_blank_values=True)]
    return f"{base}?{'&'.join(f'{k}={REDACTED}' for k in names)}" if names else base


class QueryValueFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs '%s - "%s %s HTTP/%s" %d' with (client, method, path?query, http version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], redact_query(args[2]), args[3], args[4])
        return True


def install_access_log_filter() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, QueryValueFilter) for f in logger.filters):
        logger.addFilter(QueryValueFilter())


# ---------------------------------------------------------------------------------------------------------
# Structured logs: one JSON object a line, each carrying the request id of the work it belongs to.
#
# The id comes from the caller's X-Request-ID (or is made), is returned in the response header, rides
# in every Celery task the request sends (message header `pedigree_request_id`), is restored by the worker
# around the task (and so reaches the tasks that task sends), and is sent by the trainer on its HTTP calls:
# one import can be followed from the API to the workers to the trainer with one grep.
#
# What is logged is what the code already logged: messages name ids, counts and codes, never content. The
# formatter adds no request data (no query string, no body); tests/faults/test_pii_canary.py greps every
# line a real API and worker wrote for canary PII.


REQUEST_ID_HEADER = "X-Request-ID"
TASK_HEADER = "pedigree_request_id"
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("pedigree_request_id", default=None)
# (task name, task id) while a Celery task runs in this context.
_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("pedigree_task", default=None)
# A caller's id is echoed into logs and headers: printable, short, no separators that could forge a line.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return _uuid.uuid4().hex


def clean_request_id(value: str | None) -> str:
    """The caller's id when it is safe to echo, else a new one."""
    return value if value and _VALID_ID.match(value) else new_request_id()


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token:
    return _request_id.set(value)


def set_task(name: str, task_id: str) -> contextvars.Token:
    return _task.set((name, task_id))


def reset_task(token: contextvars.Token) -> None:
    _task.reset(token)


def reset_request_id(token: contextvars.Token) -> None:
    _request_id.reset(token)


# LogRecord's own attributes, and uvicorn's ANSI-coloured copy of the message: not fields of the line.
_STD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                     "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, process, exception text.

    Extra attributes a caller passes (`log.info(..., extra={"batch_id": ...})`) are kept as fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None) or _request_id.get()
        if rid:
            out["request_id"] = rid
        task = _task.get()
        if task:
            out["task"], out["task_id"] = task
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and k != "request_id" and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


# uvicorn and Celery install their own handlers (text formatters) on these loggers; structured logging
# takes them over so every line a process writes has one shape.
_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.worker",
               "celery.app.trace", "celery.redirected")


_OUTPUT_HANDLERS = (logging.StreamHandler, logging.FileHandler, logging.handlers.WatchedFileHandler)


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """JSON lines: install the formatter on the root logger's output handler (stderr) and route the
    servers' loggers to it.
    Idempotent: calling it again (a second create_app, a Celery signal) replaces, never stacks."""
    if fmt != "json":
        return  # "text": uvicorn's and Celery's own formats, as they configure them
    root = logging.getLogger()
    formatter = JsonFormatter()
    # Only plain stream and file handlers are the process's output (Celery's worker has put one there
    # already: it is reformatted, nothing is added); a test runner's capture handlers are left as they are.
    outputs = [h for h in root.handlers if type(h) in _OUTPUT_HANDLERS]
    if not outputs:
        outputs = [logging.StreamHandler()]
        root.addHandler(outputs[0])
    for h in outputs:
        h.setFormatter(formatter)
    root.setLevel(level.upper())
    for name in _TAKEN_OVER:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


class RequestIdMiddleware:
    """Pure ASGI (the id must be in the context the endpoint and its threadpool run in): take the
    caller's X-Request-ID or make one, hold it for the request's logs and tasks, return it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for k, v in scope.get("headers") or ():
            if k == b"x-request-id":
                given = v.decode("latin-1")
                break
        rid = clean_request_id(given)
        header = (b"x-request-id", rid.encode())

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        token = _request_id.set(rid)
        try:
            await self.app(scope, receive, _send)
        finally:
            _request_id.reset(token)
