"""The import use cases: a streamed JSONL import (`StreamedImport`, `AtomicImport`) and a JSON body
stored whole (`store_objects`). They own their transactions: a streamed import commits batch by
batch, each commit carrying the batch row's counts, so the row is true after any crash; races with
concurrent imports are retried and a batch the database refuses is bisected down to the bad line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from anyio import to_thread
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.auth import CURATOR, Actor, install_scope
from app.core.db import session_factory, session_scope
from app.core.errors import ValidationFailed, note_batch_id
from app.core.sql import aware
from app.datasets import service as datasets
from app.examples import ingest, parsing
from app.examples.formats import FieldError
from app.examples.parsing import Candidate, Defaults, LineError, TooLarge
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import IngestBatch

log = logging.getLogger(__name__)

@dataclass
class Progress:
    """What an import's committed transactions have stored so far; the batch row holds the same
    figures, written in those same transactions."""

    accepted: int = 0
    unchanged: int = 0
    exact_duplicates: int = 0
    rejected: int = 0
    lines_committed: int = 0
    errors: list[LineError] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        return {"accepted": self.accepted, "unchanged": self.unchanged, "exact_duplicates": self.exact_duplicates,
                "rejected": self.rejected}


# Races between concurrent imports that a fresh transaction resolves: a deadlock PostgreSQL broke by
# aborting us, a serialization failure, and a unique-index collision with a batch that committed
# between our lookup and our insert (the retry's lookup sees it and counts the line as unchanged).
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
              psycopg.errors.UniqueViolation, psycopg.errors.LockNotAvailable)
MAX_ATTEMPTS = 6


def _cause(e: BaseException) -> BaseException:
    return getattr(e, "orig", None) or e


def is_retryable(e: BaseException) -> bool:
    return isinstance(_cause(e), _RETRYABLE)


def is_unavailable(e: BaseException) -> bool:
    """The database (or the connection to it) is gone: no line is at fault, the import stops."""
    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, (sa_exc.DisconnectionError, sa_exc.TimeoutError, sa_exc.ResourceClosedError)):
        return True
    cause = _cause(e)
    if isinstance(cause, _RETRYABLE):
        return False
    return isinstance(cause, (psycopg.OperationalError, psycopg.InterfaceError))


def with_retries(fn, what: str = "write"):
    """Run `fn()` (one whole transaction) again after a race that a fresh transaction resolves,
    with jittered, growing pauses so the racers do not collide again in step."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == MAX_ATTEMPTS or not is_retryable(e):
                raise
            log.info("%s: %s, retrying (attempt %d)", what, type(_cause(e)).__name__, attempt)
            time.sleep(random.uniform(0.5, 1.5) * 0.02 * 2 ** attempt)
    raise AssertionError("unreachable")


_BATCH = IngestBatch.__table__


def _write_progress(session: Session, batch_id: uuid.UUID, p: Progress, stamp: dt.datetime) -> None:
    session.execute(
        update(_BATCH).where(_BATCH.c.id == batch_id).values(
            accepted=p.accepted, unchanged=p.unchanged, exact_duplicates=p.exact_duplicates, rejected=p.rejected,
            lines_committed=p.lines_committed, errors=[e.to_dict() for e in p.errors[:ingest.MAX_STORED_ERRORS]],
            # A batch the sweeper gave up on comes back to life if its import was only slow.
            status="open", last_seen=stamp,
        )
    )


def _committed(batch_id: uuid.UUID, stamp: dt.datetime) -> bool:
    with session_scope() as s:
        seen = s.scalar(select(_BATCH.c.last_seen).where(_BATCH.c.id == batch_id))
    return seen is not None and aware(seen) == stamp


def mark_interrupted(batch_id: uuid.UUID) -> None:
    """The import of this batch stopped before its end: say so now, if the database lets us."""
    with session_scope() as s:
        s.execute(update(_BATCH).where(_BATCH.c.id == batch_id, _BATCH.c.status == "open")
                  .values(status="interrupted", finished_at=utcnow()))


async def _in_thread(fn, *args):
    return await to_thread.run_sync(fn, *args)


class StreamedImport:
    """One non-atomic import: every batch of lines commits on its own with the batch row's counts
    (`store_batch`), so valid lines are kept and the row is true after any crash. The HTTP route
    drives it with `run`; the CLI calls `open`, `validate`, `write` and `finish` itself."""

    atomic = False

    def __init__(self, *, dataset_ref: str | uuid.UUID, actor: Actor, defaults: Defaults,
                 channel: str = "import") -> None:
        self.dataset_ref = dataset_ref
        self.actor = actor
        self.defaults = defaults
        self.channel = channel
        self.progress = Progress()
        self.dataset: Dataset | None = None
        self.batch_id: uuid.UUID | None = None

    def open(self) -> uuid.UUID:
        with session_scope() as s:
            self.dataset = datasets.get(install_scope(s, self.actor, CURATOR), self.dataset_ref)
            batch = ingest.open_batch(s, dataset=self.dataset, actor=self.actor, channel=self.channel,
                                      atomic=False, defaults=self.defaults)
        self.batch_id = batch.id  # only once committed: `abort` marks this row
        return self.batch_id

    def validate(self, lines: list[tuple[int, bytes | TooLarge]]) -> tuple[list[Candidate], list[LineError]]:
        candidates, bad = [], []
        for line_no, raw in lines:
            r = parsing.parse_line(raw, line_no, self.dataset.format, self.defaults)
            if isinstance(r, LineError):
                bad.append(r)
            else:
                candidates.extend(r)
        return candidates, bad

    def write(self, candidates: list[Candidate], bad: list[LineError], last_line: int) -> None:
        """Store one batch of lines in a transaction of its own, the batch row's counts and
        `lines_committed` updated in that same transaction, so whatever happens next the row says
        exactly what is stored. `progress` is advanced only after the commit.

        Races with concurrent imports are retried. If the batch still fails, it is split in halves
        until the line at fault is found: that line gets a `store_failed` error, the others commit."""
        self._store_part(sorted(candidates, key=ingest.ref_order), bad, last_line)

    def finish(self, last_line: int) -> None:
        with session_scope() as s:
            b = s.get(IngestBatch, self.batch_id)
            ingest.finish_batch(s, b, errors=self.progress.errors, status="completed", lines_committed=last_line,
                                workspace_id=self.dataset.workspace_id, **self.progress.totals())

    async def abort(self) -> None:
        if self.batch_id is None:
            return
        # Best effort: with the database gone this fails too, and the stale-import sweep marks it later.
        try:
            await _in_thread(mark_interrupted, self.batch_id)
        except Exception:
            log.warning("could not mark import batch %s interrupted; the sweeper will", self.batch_id, exc_info=True)

    def result(self) -> tuple[int, dict[str, Any]]:
        """The response: 200, or 422 when no line of the body is a valid example."""
        p = self.progress
        return self._body(self.batch_id, p.totals(), p.errors, p.rejected)

    @staticmethod
    def _body(batch_id: uuid.UUID, counts: dict[str, int], shown: list[LineError],
              rejected: int) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {
            "batch_id": str(batch_id), **counts, "errors": [e.to_dict() for e in shown],
            "errors_truncated": rejected > len(shown),
        }
        if counts["accepted"] == 0 and counts["unchanged"] == 0 and rejected:
            body["error"] = {"code": "validation_error", "message": "no line of the body is a valid example",
                             "details": body["errors"]}
            return 422, body
        return 200, body

    async def run(self, chunks: AsyncIterator[bytes], *, batch_size: int,
                  line_limit: int) -> tuple[int, dict[str, Any]]:
        """Read the whole stream, a batch of lines at a time; memory stays flat however large it is."""
        try:
            await _in_thread(self.open)
            note_batch_id(self.batch_id)
            parser = parsing.LineParser(limit=line_limit)
            pending: list[tuple[int, bytes | TooLarge]] = []
            # Two-stage pipeline: batch k is written to the database (waiting on I/O, GIL released)
            # while batch k+1 is parsed and validated. Writes stay in order, one at a time.
            writing: asyncio.Future | None = None

            async def submit(lines: list[tuple[int, bytes | TooLarge]], last_line: int) -> None:
                nonlocal writing
                candidates, bad = await _in_thread(self.validate, lines)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(_in_thread(self.write, candidates, bad, last_line))

            async for chunk in chunks:
                pending.extend(parser.feed(chunk))
                # Cut at batch_size even when one chunk carried more lines: a transaction (and what a
                # crash can leave half-done) stays one batch.
                while len(pending) >= batch_size:
                    cut, pending = pending[:batch_size], pending[batch_size:]
                    await submit(cut, pending[0][0] - 1 if pending else parser.line_no)
            pending.extend(parser.close())
            if pending:
                await submit(pending, parser.line_no)
            if writing is not None:
                await writing
            await _in_thread(self.finish, parser.line_no)
        except BaseException:
            await self.abort()
            raise
        return self.result()

    def _store_part(self, candidates: list[Candidate], line_errors: list[LineError], last_line: int | None) -> None:
        try:
            self._commit_part(candidates, line_errors, last_line)
            return
        except Exception as e:
            if is_unavailable(e) or not candidates:
                raise
            log.warning("ingest batch %s: %d lines failed to store (%s); isolating the line at fault",
                        self.batch_id, len(candidates), type(_cause(e)).__name__)
        if len(candidates) == 1:
            c = candidates[0]
            bad = LineError(c.line, "store_failed", "the database refused this line; it was not stored")
            self._commit_part([], [*line_errors, bad], last_line)
            return
        mid = len(candidates) // 2
        # The first half commits without advancing lines_committed: only the last part completes the batch.
        self._store_part(candidates[:mid], [], None)
        self._store_part(candidates[mid:], line_errors, last_line)

    def _commit_part(self, candidates: list[Candidate], line_errors: list[LineError], last_line: int | None) -> None:
        progress, batch_id = self.progress, self.batch_id
        stamp = utcnow()
        after: Progress | None = None

        def attempt() -> None:
            nonlocal after
            with session_scope() as s:
                out = ingest.store(s, dataset=self.dataset, batch_id=batch_id, actor=self.actor,
                                   candidates=candidates)
                errs = sorted([*line_errors, *out.errors], key=lambda e: e.line)
                after = Progress(
                    accepted=progress.accepted + out.accepted, unchanged=progress.unchanged + out.unchanged,
                    exact_duplicates=progress.exact_duplicates + out.exact_duplicates,
                    rejected=progress.rejected + len(errs),
                    lines_committed=last_line if last_line is not None else progress.lines_committed,
                    errors=progress.errors + errs[:max(0, ingest.MAX_STORED_ERRORS - len(progress.errors))],
                )
                _write_progress(s, batch_id, after, stamp)

        try:
            with_retries(attempt, f"ingest batch {batch_id}")
        except Exception as e:
            # An error raised after the commit (a task send that failed) must not make us store the
            # lines again: the stamp in the batch row tells whether this transaction committed.
            if after is None or is_unavailable(e) or not _committed(batch_id, stamp):
                raise
            log.warning("ingest batch %s: error after commit (%s); the sweeper runs the pipeline",
                        batch_id, type(e).__name__)
        assert after is not None
        progress.__dict__.update(after.__dict__)


class AtomicImport(StreamedImport):
    """atomic=true: one session, one transaction across the whole stream (used by one thread at a
    time); any bad line stores nothing, and the attempt is kept as a failed batch."""

    atomic = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.session = session_factory()()
        self.totals = {"accepted": 0, "unchanged": 0, "exact_duplicates": 0, "rejected": 0}
        self.errors: list[LineError] = []
        self.failed_batch_id: uuid.UUID | None = None

    def open(self) -> uuid.UUID:
        self.dataset = datasets.get(install_scope(self.session, self.actor, CURATOR), self.dataset_ref)
        self.batch_id = ingest.open_batch(self.session, dataset=self.dataset, actor=self.actor, channel=self.channel,
                                          atomic=True, defaults=self.defaults).id
        return self.batch_id

    def write(self, candidates: list[Candidate], bad: list[LineError], last_line: int) -> None:
        self.errors.extend(bad)
        if self.errors:  # nothing will be kept: skip the writes but keep validating every line
            return
        out = ingest.store(self.session, dataset=self.dataset, batch_id=self.batch_id, actor=self.actor,
                           candidates=candidates)
        self.errors.extend(out.errors)
        self.totals["accepted"] += out.accepted
        self.totals["unchanged"] += out.unchanged
        self.totals["exact_duplicates"] += out.exact_duplicates

    def finish(self, last_line: int) -> None:
        errors = self.errors
        errors.sort(key=lambda e: e.line)
        self.totals["rejected"] = len(errors)
        if errors:
            self.session.rollback()
            self.session.close()
            # The attempt itself is kept (as a failed batch, nothing in it) for the audit trail.
            with session_scope() as s:
                ds = datasets.get(install_scope(s, self.actor, CURATOR), self.dataset_ref)
                b = ingest.open_batch(s, dataset=ds, actor=self.actor, channel=self.channel, atomic=True,
                                      defaults=self.defaults)
                ingest.finish_batch(s, b, accepted=0, rejected=len(errors), unchanged=0, exact_duplicates=0,
                                    errors=errors, status="failed", workspace_id=ds.workspace_id)
                self.failed_batch_id = b.id
            return
        b = self.session.get(IngestBatch, self.batch_id)
        ingest.finish_batch(self.session, b, errors=errors, status="completed", lines_committed=last_line,
                            workspace_id=self.dataset.workspace_id, **self.totals)
        self.session.commit()
        self.session.close()

    async def abort(self) -> None:
        self.session.rollback()
        self.session.close()

    def result(self) -> tuple[int, dict[str, Any]]:
        """The response: 200, or 422 naming every bad line when the import stored nothing."""
        errors = self.errors
        shown = errors[:ingest.MAX_STORED_ERRORS]
        if not errors:
            return self._body(self.batch_id, self.totals, shown, 0)
        body: dict[str, Any] = {
            "batch_id": str(self.failed_batch_id or self.batch_id), **self.totals,
            "errors": [e.to_dict() for e in shown], "errors_truncated": len(errors) > len(shown),
        }
        body.update(accepted=0, unchanged=0, exact_duplicates=0)
        body["error"] = {"code": "validation_error",
                         "message": f"{len(errors)} lines are invalid; atomic import stored nothing",
                         "details": body["errors"]}
        return 422, body


def store_objects(*, dataset_ref: str, items: list[Any], actor: Actor, defaults: Defaults) -> dict[str, Any]:
    """Store a JSON body of example objects all-or-nothing; a 422 names the index and field."""

    def work() -> dict[str, Any]:
        with session_scope() as session:
            ds = datasets.get(install_scope(session, actor, CURATOR), dataset_ref)
            candidates, errors = [], []
            for i, obj in enumerate(items):
                try:
                    candidates.extend(parsing.prepare_line(ds.format, obj, i + 1, defaults))
                except FieldError as fe:
                    errors.append({"index": i, "line": i + 1, "field": fe.field, "code": fe.code, "message": fe.message})
            if errors:
                raise ValidationFailed(f"{len(errors)} of {len(items)} examples are invalid; nothing was stored",
                                       details=errors[:ingest.MAX_STORED_ERRORS])
            batch = ingest.open_batch(session, dataset=ds, actor=actor, channel="api", atomic=True, defaults=defaults)
            out = ingest.store(session, dataset=ds, batch_id=batch.id, actor=actor, candidates=candidates,
                               want_items=True)
            if out.errors:
                raise ValidationFailed(f"{len(out.errors)} examples conflict with stored ones; nothing was stored",
                                       code="conflict", details=[e.to_dict() for e in out.errors])
            ingest.finish_batch(session, batch, accepted=out.accepted, rejected=0, unchanged=out.unchanged,
                                exact_duplicates=out.exact_duplicates, errors=[], workspace_id=ds.workspace_id)
            return {"batch_id": str(batch.id), "accepted": out.accepted, "rejected": 0, "unchanged": out.unchanged,
                    "exact_duplicates": out.exact_duplicates, "errors": [], "items": out.items}

    # One transaction for the whole body: a race with a concurrent import of the same refs rolls it
    # back whole, and the retry sees the winner's rows.
    return with_retries(work, "create examples")
