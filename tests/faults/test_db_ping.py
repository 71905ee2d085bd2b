"""The pool pings a connection at checkout only after it sat idle (app/core/db.py, PING_IDLE_S): a
connection the server closed while it waited in the pool is replaced before any statement sees it,
and one returned a moment ago is handed out without a round trip."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from app.core import db as dbmod

pytestmark = pytest.mark.usefixtures("pg_url")


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pid: int) -> None:
    from tests.conftest import PG_ADMIN_URL

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_idle_connection_closed_by_the_server_is_replaced_at_checkout(monkeypatch):
    engine = dbmod.get_engine()
    engine.dispose()
    pid = _backend_pid(engine)
    _terminate(pid)
    monkeypatch.setattr(dbmod, "PING_IDLE_S", 0.0)  # every returned connection counts as idle
    # The first statement after the kill succeeds, on another backend.
    assert _backend_pid(engine) != pid


def test_recently_returned_connection_is_not_pinged(monkeypatch):
    engine = dbmod.get_engine()
    engine.dispose()
    _backend_pid(engine)
    pings = []
    real = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or real(c))
    monkeypatch.setattr(dbmod, "PING_IDLE_S", 3600.0)
    for _ in range(3):
        _backend_pid(engine)
    assert pings == []
    monkeypatch.setattr(dbmod, "PING_IDLE_S", 0.0)
    _backend_pid(engine)
    assert len(pings) == 1


def test_broken_connection_in_use_is_replaced_after_its_failed_statement(monkeypatch):
    """Within the idle window nothing pings: the statement on the killed connection fails (as one in
    flight during a restart does), and the pool replaces its connections, so the next one succeeds."""
    engine = dbmod.get_engine()
    engine.dispose()
    monkeypatch.setattr(dbmod, "PING_IDLE_S", 3600.0)
    pid = _backend_pid(engine)
    _terminate(pid)
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError):
        _backend_pid(engine)
    assert _backend_pid(engine) != pid
