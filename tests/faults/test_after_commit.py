"""What happens after a commit: the task send, its retries, and the error a failed commit raises."""

import logging
import socket
import subprocess
import threading
import time

import pytest
import redis
from sqlalchemy import event, func, select

from app.audit import service as audit
from app.core import jobs
from app.core.config import reset_settings
from app.core.db import session_scope
from app.models.audit import AuditEvent

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker_port(pg, monkeypatch):
    """A broker URL on a port where nothing listens yet; a test may start redis-server there."""
    port = _free_port()
    monkeypatch.setenv("PEDIGREE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("PEDIGREE_EMBEDDED", "false")
    reset_settings()
    jobs.celery_client.cache_clear()
    procs: list[subprocess.Popen] = []
    yield port, procs
    for p in procs:
        p.kill()
        p.wait()
    jobs.celery_client.cache_clear()


def _audit_count() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def test_a_send_after_commit_is_retried_until_the_broker_is_back(broker_port):
    port, procs = broker_port

    def start_redis_late():
        time.sleep(1.0)
        procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL))

    threading.Thread(target=start_redis_late).start()
    t0 = time.monotonic()
    with session_scope() as s:
        audit.record(s, actor="test", action="test.enqueue", entity_type="test", payload={})
        jobs.enqueue(s, "pedigree.test.noop", 1, queue="default")
    assert time.monotonic() - t0 >= 1.0  # it did wait for the broker
    assert redis.Redis(port=port).llen("default") == 1


def test_a_send_that_keeps_failing_leaves_the_commit_standing(broker_port, caplog):
    before = _audit_count()
    with caplog.at_level(logging.ERROR, logger="app.core.jobs"), session_scope() as s:
        audit.record(s, actor="test", action="test.enqueue", entity_type="test", payload={})
        jobs.enqueue(s, "pedigree.test.noop", 1, queue="default")
        jobs.enqueue(s, "pedigree.test.noop", 2, queue="default")
    assert _audit_count() == before + 1
    assert any("could not send pedigree.test.noop" in r.getMessage() for r in caplog.records)
    # The second send is not attempted after the first ran out of retries (same broker, same outage).
    assert any("1 more sends of this commit" in r.getMessage() for r in caplog.records)


def test_a_failure_inside_commit_raises_its_own_error_not_the_rollbacks(pg):
    class AfterCommitFailed(Exception):
        pass

    def fail(_session):
        raise AfterCommitFailed("after-commit hook failed")

    with pytest.raises(AfterCommitFailed), session_scope() as s:
        event.listen(s, "after_commit", fail)
        audit.record(s, actor="test", action="test.commit", entity_type="test", payload={})


def test_the_stage_task_retries_broker_errors():
    from kombu.exceptions import OperationalError as BrokerOperationalError

    from workers.tasks.pipeline import run_stage

    # A broker call that fails inside the task (kombu wraps redis-py's errors in its own) is a
    # transient fault like a database disconnect: the batch rolled back, the task runs again.
    assert any(issubclass(BrokerOperationalError, t) for t in run_stage.autoretry_for)
