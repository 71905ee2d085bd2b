"""A Celery worker's own metrics and readiness, on a separate listen address (PEDIGREE_METRICS_PORT).

A worker has no HTTP server of its own, and its tasks run in pool children, so the exporter runs as a
thread of the worker's main process and serves what the children wrote into PROMETHEUS_MULTIPROC_DIR
(which a worker with an exporter therefore needs). It serves:

- GET /metrics: counters and histograms of this host's processes (stage batches, task outcomes, ...);
  the database and Redis levels are the API's /metrics, so one scrape of each is enough.
- GET /readyz: the API's readiness checks, for the compose healthcheck and orchestrators.

No key: it listens on its own port (PEDIGREE_METRICS_HOST, 127.0.0.1 unless set), which only the
scraper should reach; it serves counts, never data.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app.ops import metrics, readiness

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype, status = metrics.scrape(levels=False), metrics.CONTENT_TYPE, 200
        elif path == "/readyz":
            res = readiness.readiness()
            body, ctype, status = json.dumps(res).encode(), "application/json", 200 if res["ok"] else 503
        elif path == "/healthz":
            body, ctype, status = b'{"ok": true}', "application/json", 200
        else:
            body, ctype, status = b'{"error": {"code": "not_found", "message": "not found", "details": null}}', \
                "application/json", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:  # a scrape every 15 s is not worth a log line
        pass


def start(host: str, port: int) -> ThreadingHTTPServer:
    if not metrics.multiprocess_dir():
        log.error("PEDIGREE_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: the pool children's "
                  "metrics cannot reach the exporter; set it to an empty folder before the worker starts")
    srv = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=srv.serve_forever, name="metrics-exporter", daemon=True).start()
    log.info("metrics exporter listening on %s:%d", host, srv.server_address[1])
    return srv
