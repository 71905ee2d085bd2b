"""Engine and sessions. The request owns the transaction: services flush, never commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends
from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import get_settings

log = logging.getLogger(__name__)


def json_dumps(value: object) -> str:
    # The engine's JSON serialiser. orjson: several times faster than json.dumps on the ingest path,
    # and it serialises UUIDs and datetimes without a custom default.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# PostgreSQL's integer types: an integer parameter is bounded by the column it is compared with, so
# an out-of-range value is a 422 naming the parameter instead of the database's "out of range" (a 500).
INT_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1


@lru_cache
def _engine_for(url: str, echo: bool, pool_size: int = 20) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            hide_parameters=True,  # see below
            json_serializer=json_dumps,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        # No BEGIN IMMEDIATE: the audit append starts with an UPDATE of the head row, which takes
        # SQLite's write lock before the head is read, so the chain cannot fork; a stale snapshot
        # fails with SQLITE_BUSY instead of writing a wrong link.
        return engine
    # hide_parameters: a failed statement's message (logged by the 500 handler and by workers) would
    # otherwise carry its bound values, i.e. raw example text and provenance, into the logs.
    engine = create_engine(
        url, echo=echo, hide_parameters=True, json_serializer=json_dumps, pool_size=pool_size, max_overflow=20,
    )
    _ping_when_idle(engine)
    return engine


# A pooled connection is pinged at checkout only when it sat unused for longer than this. SQLAlchemy's
# pool_pre_ping pings at every checkout: a round trip (and a statement in PostgreSQL) per request and
# per committer batch, ~10% of the review path's statements, for connections returned milliseconds
# earlier. What the ping is for, a connection the server or the network closed while it sat in the
# pool (restart, idle timeout), is caught as before for every connection idle longer than this; one
# that was in use less than a second ago and broke since fails its statement, which SQLAlchemy sees
# as a disconnect and answers by replacing every pooled connection older than it, as a failed ping does.
PING_IDLE_S = 1.0
_RETURNED = "pedigree_returned_at"


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn, record):
        if record is not None:
            record.info[_RETURNED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):
        # A new connection (no return noted: record.info is cleared when a connection is replaced)
        # was just opened, so it needs no ping either.
        returned = record.info.get(_RETURNED)
        if returned is None or time.monotonic() - returned < PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as e:
            # The pool retries the checkout on a new connection and replaces the older ones, as
            # pool_pre_ping does on a failed ping.
            raise exc.InvalidatePoolError(f"ping failed: {type(e).__name__}") from e


def get_engine() -> Engine:
    s = get_settings()
    return _engine_for(s.database_url, s.log_sql, s.db_pool_size)


def session_factory() -> sessionmaker[Session]:
    return _sessionmaker_for(get_engine())


@lru_cache
def _sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    # One per engine: every sessionmaker() builds a new Session subclass with its own event dispatch,
    # which cost ~5% of the API's CPU when made per request.
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error (workers, CLI, tests)."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        try:
            session.rollback()
        except Exception:
            # The rollback fails when the commit itself was what failed (an after-commit hook raised,
            # the connection died mid-COMMIT); its error would replace the one that says what went
            # wrong, so it is logged and the original is raised.
            log.warning("rollback after a failed transaction failed as well", exc_info=True)
        raise
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    # A failed request must leave no trace: the rollback here is what makes "nothing already accepted
    # is lost, nothing half-written is kept" hold for every endpoint without each one repeating it.
    with session_scope() as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit is an error response,
# never a 201 for data that is not there.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
