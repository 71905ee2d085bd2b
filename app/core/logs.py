"""Log hygiene: an access log line must not carry what the API itself pseudonymises.

Query strings hold caller values (`?source_ref=ticket-for-jane@example.com`, `?reviewer=`, `?tag=`), and
uvicorn's access log writes the path with its query string verbatim. The filter keeps the path and the
parameter names, which is what an operator reads an access log for, and replaces every value with `*`.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

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
