"""An import through a real API process, interrupted by a database crash or by the API's own death:
the client is told an error or the truth, the batch ends `interrupted` with `accepted` equal to the
rows committed, a re-send completes it idempotently, and the audit chain verifies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.factories import make_keys
from tests.faults.helpers import assert_audit_chain_verifies, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

N = 30_000
IMPORT_LEASE_S = 3.0


def _lines(tag: str) -> Iterator[bytes]:
    chunk = []
    for i in range(N):
        chunk.append(orjson.dumps({"instruction": f"question {tag} {i} about the harbor and the lantern",
                                   "output": f"answer {i}", "provenance": {"source_ref": f"{tag}-{i}"}}) + b"\n")
        if len(chunk) == 500:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


class Import(threading.Thread):
    """POST examples:import streamed from a generator; keeps the answer or the transport error."""

    def __init__(self, base: str, key: str, ds_id: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.base, self.key, self.ds_id, self.tag = base, key, ds_id, tag
        self.status: int | None = None
        self.body: dict[str, Any] | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            r = httpx.post(f"{self.base}/v1/datasets/{self.ds_id}/examples:import", content=_lines(self.tag),
                           headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/x-ndjson"},
                           timeout=120)
            self.status, self.body = r.status_code, r.json()
        except (httpx.HTTPError, ValueError) as e:
            self.error = e


def _setup(stack, monkeypatch) -> tuple[str, dict[str, str], str]:
    stack.env["PEDIGREE_IMPORT_LEASE_S"] = str(IMPORT_LEASE_S)
    monkeypatch.setenv("PEDIGREE_IMPORT_LEASE_S", str(IMPORT_LEASE_S))
    from app.core.config import reset_settings

    reset_settings()
    keys = make_keys()
    base = stack.start_api()
    r = httpx.post(f"{base}/v1/datasets", json={"name": "faults", "format": "instruction"},
                   headers={"Authorization": f"Bearer {keys['curator']}"})
    assert r.status_code == 201, r.text
    return base, keys, r.json()["id"]


def _committed_rows(stack) -> int:
    return stack.sql("SELECT count(*) FROM examples")[0][0]


def _the_batch(stack) -> dict[str, Any]:
    [(bid, status, accepted)] = stack.sql("SELECT id, status, accepted FROM ingest_batches ORDER BY created_at LIMIT 1")
    rows = stack.sql("SELECT count(*) FROM examples WHERE ingest_batch_id = %s", bid)[0][0]
    return {"id": str(bid), "status": status, "accepted": accepted, "rows": rows}


def _resend_completes(stack, base: str, keys: dict[str, str], ds_id: str, committed: int) -> None:
    """The whole file again: the committed lines are `unchanged`, the rest accepted, each ref once."""
    again = Import(base, keys["curator"], ds_id, "imp")
    again.run()
    assert again.status == 200, (again.status, again.body, again.error)
    assert again.body["accepted"] == N - committed and again.body["unchanged"] == committed, again.body
    [(rows, refs)] = stack.sql("SELECT count(*), count(DISTINCT source_ref) FROM examples")
    assert rows == refs == N


def test_a_database_crash_mid_import_leaves_a_true_account(stack, monkeypatch):
    base, keys, ds_id = _setup(stack, monkeypatch)
    imp = Import(base, keys["curator"], ds_id, "imp")
    imp.start()
    wait_for("some batches of the import to commit", lambda: _committed_rows(stack) >= 10_000, 120, poll_s=0.1)
    stack.pg.restart_immediate()
    imp.join(120)
    assert not imp.is_alive()
    committed = _committed_rows(stack)
    assert 0 < committed < N, committed
    if imp.status == 200:  # it finished in spite of the crash: then its account must be the stored one
        assert imp.body["accepted"] == committed == N
    elif imp.status is not None:
        err = imp.body["error"]
        assert "changed nothing" not in err["message"], err
        assert err["details"]["batch_id"] == _the_batch(stack)["id"], err
    # Marked by the API as the import failed, or by the stale-import sweep once the database is back.
    from app.examples.jobs import sweep_stale_imports

    def interrupted() -> bool:
        sweep_stale_imports()
        return _the_batch(stack)["status"] == "interrupted"

    wait_for("the batch to be marked interrupted", interrupted, IMPORT_LEASE_S + 30, poll_s=0.5)
    batch = _the_batch(stack)
    assert batch["accepted"] == batch["rows"] == committed, batch
    told = imp.body["error"]["message"] if imp.body and "error" in imp.body else imp.error
    print(f"\npostgres restart -m immediate mid-import: client got {imp.status or type(imp.error).__name__} "
          f"({told}), {committed} rows committed, batch {batch['status']} with accepted={batch['accepted']}")
    _resend_completes(stack, base, keys, ds_id, committed)
    assert_audit_chain_verifies()


def test_an_api_killed_mid_import_leaves_an_interrupted_batch_that_a_resend_completes(stack, monkeypatch):
    base, keys, ds_id = _setup(stack, monkeypatch)
    imp = Import(base, keys["curator"], ds_id, "imp")
    imp.start()
    wait_for("some batches of the import to commit", lambda: _committed_rows(stack) >= 10_000, 120, poll_s=0.1)
    stack.kill("api")
    t_kill = time.monotonic()
    imp.join(60)
    assert imp.error is not None and imp.status is None  # the connection died with the process
    committed = _committed_rows(stack)
    assert 0 < committed < N, committed
    assert _the_batch(stack)["status"] == "open"  # nobody could say otherwise yet
    time.sleep(max(0.0, IMPORT_LEASE_S - (time.monotonic() - t_kill)) + 0.5)
    base = stack.start_api("api2")  # its start-up check marks what the dead process left open
    batch = _the_batch(stack)
    assert batch["status"] == "interrupted" and batch["accepted"] == batch["rows"] == committed, batch
    r = httpx.get(f"{base}/v1/ingest-batches/{batch['id']}", headers={"Authorization": f"Bearer {keys['auditor']}"})
    assert r.json()["status"] == "interrupted" and r.json()["accepted"] == committed
    print(f"\nAPI SIGKILL mid-import: {committed} rows committed, batch interrupted at the next start-up "
          f"with accepted={batch['accepted']}")
    _resend_completes(stack, base, keys, ds_id, committed)
    assert_audit_chain_verifies()
