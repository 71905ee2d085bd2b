"""The 500 body says only what is true about what the failed request left behind."""

import pytest
from fastapi.testclient import TestClient

from app.audit import service as audit
from app.core.db import session_scope
from app.core.errors import note_batch_id
from app.main import create_app

pytestmark = [pytest.mark.postgres]


class Broke(Exception):
    pass


@pytest.fixture
def client(pg):
    app = create_app()

    # Real routes through the real middleware and handlers; only the failure is made on purpose.
    @app.post("/test/fail-before-commit")
    def fail_before_commit():
        with session_scope() as s:
            audit.record(s, actor="test", action="test.write", entity_type="test", payload={})
            raise Broke("before the commit")

    @app.post("/test/fail-after-commit")
    def fail_after_commit():
        with session_scope() as s:
            audit.record(s, actor="test", action="test.write", entity_type="test", payload={})
        raise Broke("after the commit")

    @app.post("/test/import-fails-after-its-batch")
    async def import_fails():
        with session_scope() as s:
            audit.record(s, actor="test", action="test.write", entity_type="test", payload={})
        note_batch_id("0190c0de-0000-7000-8000-000000000001")
        raise Broke("mid-import")

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_a_request_that_committed_nothing_says_so(client):
    r = client.post("/test/fail-before-commit")
    assert r.status_code == 500
    assert r.json()["error"] == {"code": "internal_error", "message": "internal error; the request changed nothing",
                                 "details": None}


def test_a_request_that_committed_something_does_not_claim_it_changed_nothing(client):
    r = client.post("/test/fail-after-commit")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal_error"
    assert "changed nothing" not in err["message"] and "committed" in err["message"]
    assert err["details"] == {"committed": "partly"}
    # The record is per request: the next failure before any commit is again "changed nothing".
    assert "changed nothing" in client.post("/test/fail-before-commit").json()["error"]["message"]


def test_an_import_that_failed_after_its_batch_points_at_the_batch(client):
    err = client.post("/test/import-fails-after-its-batch").json()["error"]
    assert err["details"]["batch_id"] == "0190c0de-0000-7000-8000-000000000001"
    assert "/v1/ingest-batches/0190c0de-0000-7000-8000-000000000001" in err["message"]
