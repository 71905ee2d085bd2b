"""Review workflow: queue with leases, decisions under the dataset's policy, edits as revisions,
machine suggestions, stats.

Every mutating function takes the example's row lock first (FOR UPDATE on PostgreSQL; on SQLite a
no-op write that takes the database's write lock), then checks, then writes. A refused request
raises before its first real write and the request's transaction rolls back, so nothing changes.
"""

from __future__ import annotations

import datetime as dt
import functools
import statistics
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, delete, exists, false, func, insert, literal_column, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import KEY_COLUMNS, Actor, check_key, check_role, key_prefix
from app.core.config import get_settings
from app.core.errors import Conflict, Forbidden, InvalidState, NotFound, PedigreeError, ValidationFailed
from app.core.ids import new_id
from app.core.sql import any_of
from app.examples import service as examples
from app.examples.formats import FieldError, content_sha256, normalize
from app.models.auth import ApiKey
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision
from app.models.review import (
    DECISIONS,
    Review,
    ReviewEscalation,
    ReviewLease,
    ReviewSessionRevocation,
    ReviewSuggestion,
)
from app.pipeline import service as pipeline
from app.pipeline import stages
from app.review import agreement
from app.review.schemas import BulkReviewIn, ReviewIn, ReviewPolicy, RevisionIn, SuggestionIn

E = Example.__table__
R = Review.__table__
L = ReviewLease.__table__
REV = ExampleRevision.__table__
ESC = ReviewEscalation.__table__

EDITABLE = ("pending_review", "changes_requested", "approved")
REV_COLS = (REV.c.seq, REV.c.reason, REV.c.author, REV.c.content, REV.c.content_sha256, REV.c.quality)
# Revisions whose author wrote the content; a pii_scrub or erasure revision is the system's.
AUTHORED = ("ingest", "reviewer_edit")


def _aware(ts: dt.datetime) -> dt.datetime:
    # SQLite hands datetimes back naive; everything stored is UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def _iso(ts: dt.datetime | None) -> str | None:
    return _aware(ts).isoformat() if ts else None


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _serialize_writers(session: Session) -> None:
    """On SQLite, take the write lock before reading state we are about to act on: pysqlite opens
    the transaction at the first write, so reads before it could be stale by the time we write."""
    if not _is_pg(session):
        session.execute(update(L).where(false()).values(holder=L.c.holder))


@functools.lru_cache(maxsize=2)
def _context_statement(by_id: bool) -> Any:
    K, D = ApiKey.__table__, Dataset.__table__
    # Whether the caller holds live leases on pending items here: almost never after a decision, and
    # then next_items skips its own-lease query.
    own = (select(literal_column("1")).select_from(L.join(E, E.c.id == L.c.example_id))
           .where(L.c.dataset_id == D.c.id, L.c.holder_key_id == K.c.id,
                  L.c.expires_at > bindparam("now", type_=L.c.expires_at.type),
                  E.c.status == "pending_review", E.c.stage.is_(None), L.c.revision_id == E.c.current_revision_id)
           .exists())
    cond = D.c.id == bindparam("ds_id", type_=D.c.id.type) if by_id else D.c.name == bindparam("ds_name")
    return (select(*KEY_COLUMNS, D.c.id.label("ds_id"), D.c.name.label("ds_name"), D.c.review_policy,
                   own.label("has_own"))
            .select_from(K.outerjoin(D, cond)).where(K.c.prefix == bindparam("prefix")))


def queue_context(session: Session, token: str, ref: str, *roles: str) -> tuple[Actor, Any, bool]:
    """The queue's key check, dataset lookup and own-lease probe in one round trip: (actor, dataset
    as id/name/review_policy, whether the caller holds live leases in it). Refuses in the order the
    separate checks would: bad key 401, role 403, unknown dataset 404."""
    prefix = key_prefix(token)
    try:
        params: dict[str, Any] = {"ds_id": uuid.UUID(str(ref))}
    except ValueError:
        params = {"ds_name": str(ref)}
    row = session.connection().execute(_context_statement("ds_id" in params),
                                       {**params, "prefix": prefix, "now": utcnow()}).first()
    actor = check_role(check_key(row, token), roles)
    if row.ds_id is None:
        raise NotFound(f"dataset {ref} not found", details={"dataset": str(ref)})
    return actor, SimpleNamespace(id=row.ds_id, name=row.ds_name, review_policy=row.review_policy), bool(row.has_own)


def policy_of(dataset: Any) -> ReviewPolicy:
    return ReviewPolicy.effective(dataset.review_policy)


def _lock_example(session: Session, example_id: str | uuid.UUID) -> Example:
    try:
        eid = uuid.UUID(str(example_id))
    except ValueError:
        raise NotFound(f"example {example_id} not found", details={"example": str(example_id)}) from None
    _serialize_writers(session)
    q = select(Example).where(Example.id == eid)
    if _is_pg(session):
        q = q.with_for_update()
    # populate_existing: the row may sit in the identity map from before the lock was taken.
    ex = session.scalars(q.execution_options(populate_existing=True)).one_or_none()
    if ex is None:
        raise NotFound(f"example {example_id} not found", details={"example": str(example_id)})
    return ex


def _check_reason(policy: ReviewPolicy, decision: str, reason_code: str | None) -> None:
    if reason_code is None:
        if decision != "approve":
            raise ValidationFailed(
                f"a {decision} needs a reason_code", code="reason_required",
                details=[{"field": "reason_code", "code": "missing",
                          "message": f"one of {', '.join(policy.reason_codes)}"}])
        return
    if reason_code not in policy.reason_codes:
        raise ValidationFailed(
            f"unknown reason code {reason_code!r}", code="unknown_reason_code",
            details=[{"field": "reason_code", "code": "unknown",
                      "message": f"one of {', '.join(policy.reason_codes)}"}])


def _lease_row(session: Session, example_id: uuid.UUID) -> Any:
    return session.execute(select(L).where(L.c.example_id == example_id)).one_or_none()


def _check_lease(lease: Any, actor: Actor, now: dt.datetime) -> None:
    """A decision needs no lease (API clients may decide directly), but it must not cut across one:
    someone else's live lease, or the caller's own lease that ran out (the item may be back in the
    queue and in another reviewer's hands a moment later)."""
    if lease is None:
        return
    live = _aware(lease.expires_at) > now
    mine = lease.holder_key_id == actor.key_id
    if mine and not live:
        raise Conflict("your lease on this example expired; fetch it from the queue again", code="lease_expired",
                       details={"expired_at": _iso(lease.expires_at)})
    if not mine and live:
        raise Conflict("another reviewer holds this example", code="leased",
                       details={"holder": lease.holder, "expires_at": _iso(lease.expires_at)})


# --- queue -------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _pick_statement(pg: bool, four_eyes: bool, admin: bool, with_exclude: bool) -> Any:
    """The queue's pick-and-lease statement, built once per shape: constructing CTEs and their
    column proxies costs more CPU than running the statement, and the values are all parameters."""
    now = bindparam("now", type_=L.c.expires_at.type)

    def none_of(*conds: Any) -> Any:
        # Probed per candidate through the (revision_id, reviewer) and (example_id, seq) indexes. A
        # plain NOT EXISTS lets PostgreSQL turn these into anti-joins over a full scan of all reviews
        # and revisions by the caller (no index on the reviewer or author), made once per pick:
        # measured 32 ms of database CPU per pick at 25,000 examples, growing with every decision.
        # OFFSET 0 keeps each one a per-row subplan; the pick stops after a handful of rows.
        q = select(literal_column("1")).where(*conds)
        return ~(q.offset(0) if pg else q).exists()

    # The status is matched as a range of one value and is part of the ORDER BY on purpose: only the
    # (dataset_id, status, id) index yields that order, so the pending items are read straight from
    # it. With `status = ...` the order is plain `id`, and after a burst of decisions (before
    # autovacuum re-analyses) the planner walks the primary key through every decided example:
    # measured 3,700 rows filtered and 7-10 ms per pick 40 s into the benchmark, growing.
    pending = "pending_review"
    cand = (select(E.c.id, E.c.current_revision_id)
            .where(E.c.dataset_id == bindparam("ds", type_=E.c.dataset_id.type),
                   E.c.status >= pending, E.c.status <= pending, E.c.stage.is_(None),
                   ~exists().where(L.c.example_id == E.c.id, L.c.expires_at > now),
                   none_of(R.c.revision_id == E.c.current_revision_id,
                           R.c.reviewer_key_id == bindparam("key", type_=R.c.reviewer_key_id.type)))
            .order_by(E.c.dataset_id, E.c.status, E.c.id).limit(bindparam("want")))
    if not admin:
        cand = cand.where(~exists().where(ESC.c.example_id == E.c.id))
    if four_eyes:
        # Only items the caller may approve: nothing they ingested or wrote.
        ref = bindparam("ref", type_=E.c.ingested_by.type)
        cand = cand.where(E.c.ingested_by != ref,
                          none_of(REV.c.example_id == E.c.id, REV.c.author == ref,
                                  any_of(REV.c.reason, name="authored", pg=pg)))
    if with_exclude:
        cand = cand.where(~any_of(E.c.id, name="exclude", pg=pg))
    if pg:
        cand = cand.with_for_update(of=E, skip_locked=True)
    picked = cand.cte("picked")
    cols = ("example_id", "dataset_id", "revision_id", "holder_key_id", "holder", "acquired_at", "expires_at")
    src = select(picked.c.id, bindparam("ds", type_=L.c.dataset_id.type), picked.c.current_revision_id,
                 bindparam("key", type_=L.c.holder_key_id.type), bindparam("ref", type_=L.c.holder.type), now,
                 bindparam("expires", type_=L.c.expires_at.type)).where(true())  # SQLite: WHERE before ON CONFLICT
    ins = (pg_insert if pg else sqlite_insert)(L).from_select(list(cols), src)
    stmt = ins.on_conflict_do_update(
        index_elements=[L.c.example_id],
        set_={k: ins.excluded[k] for k in cols[1:]},
        where=L.c.expires_at <= now,
    ).returning(L.c.example_id, L.c.revision_id, L.c.acquired_at, L.c.expires_at)
    if pg:
        # The content comes back from the same statement: pick, lease and read in one round trip.
        got = stmt.cte("granted")
        stmt = select(got, *REV_COLS).join(REV, REV.c.id == got.c.revision_id)
    return stmt


def next_items(session: Session, *, dataset: Any, actor: Actor, limit: int = 1,
               exclude: Iterable[uuid.UUID] = (), with_view: bool = False,
               own_leases: bool = True) -> list[dict[str, Any]]:
    """Hand the caller up to `limit` examples nobody else holds, each with a lease.

    The caller's own live leases come first (a reload gets the same item back, renewed). New items
    are picked with FOR UPDATE SKIP LOCKED on PostgreSQL, so concurrent callers split the queue
    instead of waiting; the lease upsert only takes a row whose lease is absent or expired, and
    RETURNING says which it took, so even a stale pick cannot hand one item to two reviewers.
    Pick and upsert are one statement (a data-modifying CTE): one round trip on the hot path.
    `own_leases=False` (the caller just checked, see queue_context) skips the own-lease query."""
    policy = policy_of(dataset)
    now = utcnow()
    expires = now + dt.timedelta(seconds=policy.lease_seconds)
    exclude = [uuid.UUID(str(x)) for x in exclude]
    conn = session.connection()
    pg = conn.dialect.name == "postgresql"
    _serialize_writers(session)

    granted: dict[uuid.UUID, Any] = {}
    if own_leases:
        own_q = (select(L.c.example_id).join(E, E.c.id == L.c.example_id)
                 .where(L.c.dataset_id == dataset.id, L.c.holder_key_id == actor.key_id, L.c.expires_at > now,
                        E.c.status == "pending_review", E.c.stage.is_(None),
                        L.c.revision_id == E.c.current_revision_id)
                 .order_by(L.c.example_id).limit(limit))
        if exclude:
            own_q = own_q.where(L.c.example_id.not_in(exclude))
        if own := list(session.scalars(own_q)):
            for r in session.execute(update(L).where(L.c.example_id.in_(own)).values(expires_at=expires)
                                     .returning(L.c.example_id, L.c.revision_id, L.c.acquired_at, L.c.expires_at)):
                granted[r.example_id] = r

    # A row another reviewer leased after this statement's snapshot is still lockable (their
    # transaction only locked it) but refused by the upsert; the next statement sees that lease and
    # passes the row by. So on PostgreSQL a short pick comes back for another try.
    for _attempt in range(3 if pg else 1):
        want = limit - len(granted)
        if want <= 0:
            break
        stmt = _pick_statement(pg, policy.four_eyes, actor.role == "admin", bool(exclude))
        params = {"ds": dataset.id, "now": now, "expires": expires, "key": actor.key_id, "ref": actor.ref,
                  "want": want, "authored": list(AUTHORED)}
        if exclude:
            params["exclude"] = exclude
        got_any = False
        for r in conn.execute(stmt, params):
            granted[r.example_id] = r
            got_any = True
        if not got_any and _attempt > 0:  # twice nothing: the queue is empty for this caller
            break
    if not granted:
        return []
    order = sorted(granted)
    revs = {r.revision_id: r for r in granted.values() if "content" in r._fields}
    missing = [granted[e].revision_id for e in order if granted[e].revision_id not in revs]
    if missing:
        revs.update((r.id, r) for r in session.execute(select(REV.c.id, *REV_COLS).where(REV.c.id.in_(missing))))
    exs = {ex.id: ex for ex in session.scalars(select(Example).where(Example.id.in_(order)))} if with_view else {}
    out = []
    for eid in order:
        ls = granted[eid]
        rv = revs[ls.revision_id]
        item: dict[str, Any] = {"example_id": str(eid), "revision_id": str(ls.revision_id),
                                "dataset_id": str(dataset.id), "lease_expires_at": _iso(ls.expires_at),
                                "leased_at": _iso(ls.acquired_at),
                                "revision": {"id": str(ls.revision_id), "seq": rv.seq, "reason": rv.reason, "author": rv.author,
                                             "content": rv.content, "content_sha256": rv.content_sha256},
                                "quality_flags": (rv.quality or {}).get("flags", [])}
        if with_view:
            item["example"] = examples.view(session, exs[eid], actor)
        out.append(item)
    return out


def renew_lease(session: Session, *, example_id: str | uuid.UUID, actor: Actor) -> dict[str, Any]:
    ex = _lock_example(session, example_id)
    lease = _lease_row(session, ex.id)
    now = utcnow()
    if lease is None or lease.holder_key_id != actor.key_id:
        raise Conflict("you hold no lease on this example", code="not_leased")
    if _aware(lease.expires_at) <= now:
        raise Conflict("your lease on this example expired; fetch it from the queue again", code="lease_expired",
                       details={"expired_at": _iso(lease.expires_at)})
    policy = policy_of(session.get(Dataset, ex.dataset_id))
    expires = now + dt.timedelta(seconds=policy.lease_seconds)
    session.execute(update(L).where(L.c.example_id == ex.id).values(expires_at=expires))
    return {"example_id": str(ex.id), "revision_id": str(lease.revision_id), "lease_expires_at": _iso(expires)}


def release_lease(session: Session, *, example_id: str | uuid.UUID, actor: Actor) -> dict[str, Any]:
    ex = _lock_example(session, example_id)
    n = session.execute(delete(L).where(L.c.example_id == ex.id, L.c.holder_key_id == actor.key_id)).rowcount
    return {"example_id": str(ex.id), "released": bool(n)}


# --- decisions ---------------------------------------------------------------------------------------------

def _outcome(policy: ReviewPolicy, tally: Counter[str], decision: str) -> str | None:
    """'approved', the rejection target, 'escalate', or None (wait for more reviewers)."""
    approvals, rejects = tally["approve"], tally["reject"]
    need = policy.required_approvals
    rejected = "rejected" if policy.rejection == "final" else "changes_requested"
    if decision == "request_changes":
        return "changes_requested"
    match policy.conflict_resolution:
        case "any_reject":
            if rejects:
                return rejected
            return "approved" if approvals >= need else None
        case "majority":
            if approvals >= need and approvals > rejects:
                return "approved"
            if rejects >= need and rejects > approvals:
                return rejected
            return None
        case "escalate":
            # Collect `need` opinions; unanimity decides, any disagreement goes to an admin.
            if approvals and rejects:
                return "escalate"
            if approvals >= need:
                return "approved"
            if rejects >= need:
                return rejected
            return None
    raise AssertionError(policy.conflict_resolution)


@dataclass
class DecisionRequest:
    example_id: str | uuid.UUID
    actor: Actor
    data: ReviewIn


@dataclass
class _Batch:
    """State of the examples a batch touches, read once and updated in memory as decisions apply,
    so a later decision in the batch sees an earlier one (two approvals of one example, say)."""

    examples: dict[uuid.UUID, Any]
    policies: dict[uuid.UUID, ReviewPolicy]
    status: dict[uuid.UUID, str]
    leases: dict[uuid.UUID, Any]
    escalated: set[uuid.UUID]
    tallies: dict[uuid.UUID, Counter[str]]
    decided: set[tuple[uuid.UUID, uuid.UUID]]
    authored: set[tuple[uuid.UUID, str]]


@functools.lru_cache(maxsize=2)
def _batch_statements(pg: bool) -> tuple[Any, Any, Any]:
    """The batch's three reads, built once (see any_of): the locking read with the lease and the
    escalation riding on it (both keyed by the example, so the outer joins add no rows), the current
    revisions' decisions, and which of the batch's reviewers wrote a revision of which example."""
    D = Dataset.__table__
    lock = (select(E.c.id, E.c.dataset_id, E.c.status, E.c.stage, E.c.current_revision_id, E.c.ingested_by,
                   D.c.review_policy, L.c.holder_key_id, L.c.holder, L.c.acquired_at, L.c.expires_at,
                   ESC.c.example_id.label("escalated_id"))
            .join(D, D.c.id == E.c.dataset_id)
            .outerjoin(L, L.c.example_id == E.c.id)
            .outerjoin(ESC, ESC.c.example_id == E.c.id)
            .where(any_of(E.c.id, name="ids", pg=pg)).order_by(E.c.id))
    if pg:
        # Locked in id order, so concurrent batches queue instead of deadlocking.
        lock = lock.with_for_update(of=E)
    decisions = (select(R.c.revision_id, R.c.reviewer_key_id, R.c.decision)
                 .where(any_of(R.c.revision_id, name="rids", pg=pg)))
    authored = (select(REV.c.example_id, REV.c.author)
                .where(any_of(REV.c.example_id, name="ids", pg=pg), any_of(REV.c.author, name="refs", pg=pg),
                       any_of(REV.c.reason, name="authored", pg=pg)))
    return lock, decisions, authored


def _load_batch(session: Session, ids: list[uuid.UUID], refs: set[str]) -> _Batch:
    conn = session.connection()
    lock, decisions, authored_q = _batch_statements(conn.dialect.name == "postgresql")
    examples = {r.id: r for r in conn.execute(lock, {"ids": ids})}
    leases = {e: SimpleNamespace(holder_key_id=r.holder_key_id, holder=r.holder, acquired_at=r.acquired_at,
                                 expires_at=r.expires_at)
              for e, r in examples.items() if r.holder_key_id is not None}
    escalated = {e for e, r in examples.items() if r.escalated_id is not None}
    eids = list(examples)
    rids = [r.current_revision_id for r in examples.values()]
    tallies: dict[uuid.UUID, Counter[str]] = defaultdict(Counter)
    decided: set[tuple[uuid.UUID, uuid.UUID]] = set()
    authored: set[tuple[uuid.UUID, str]] = set()
    if eids:
        for r in conn.execute(decisions, {"rids": rids}):
            tallies[r.revision_id][r.decision] += 1
            decided.add((r.revision_id, r.reviewer_key_id))
        authored = {(r.example_id, r.author) for r in conn.execute(
            authored_q, {"ids": eids, "refs": sorted(refs), "authored": list(AUTHORED)})}
    policies: dict[uuid.UUID, ReviewPolicy] = {}
    for r in examples.values():
        if r.dataset_id not in policies:
            policies[r.dataset_id] = ReviewPolicy.effective(r.review_policy)
    return _Batch(examples=examples, policies=policies, status={e: r.status for e, r in examples.items()},
                  leases=leases, escalated=escalated, tallies=tallies, decided=decided, authored=authored)


def _check(b: _Batch, eid: uuid.UUID, rq: DecisionRequest, now: dt.datetime) -> Any:
    ex = b.examples.get(eid)
    if ex is None:
        raise NotFound(f"example {rq.example_id} not found", details={"example": str(rq.example_id)})
    actor, data = rq.actor, rq.data
    policy = b.policies[ex.dataset_id]
    status = b.status[eid]
    if status != "pending_review" or ex.stage is not None:
        raise InvalidState(f"example is {status}, not pending_review", code="not_pending",
                           details={"status": status, "stage": ex.stage})
    if data.revision_id != ex.current_revision_id:
        raise Conflict("the revision you reviewed is no longer current", code="stale_revision",
                       details={"revision_id": str(data.revision_id), "current_revision_id": str(ex.current_revision_id)})
    _check_reason(policy, data.decision, data.reason_code)
    if eid in b.escalated and actor.role != "admin":
        raise Forbidden("this example was escalated; an admin decides it", code="escalated")
    if policy.four_eyes and data.decision == "approve" and (
            ex.ingested_by == actor.ref or (eid, actor.ref) in b.authored):
        raise Forbidden("four eyes: you may not approve an example you ingested or edited", code="four_eyes",
                        details={"reviewer": actor.ref})
    _check_lease(b.leases.get(eid), actor, now)
    if (ex.current_revision_id, actor.key_id) in b.decided:
        raise Conflict("you already decided on this revision", code="already_decided")
    return ex


@functools.lru_cache(maxsize=2)
def _write_statements(pg: bool) -> SimpleNamespace:
    return SimpleNamespace(
        add_reviews=insert(R),
        drop_leases=delete(L).where(any_of(L.c.example_id, name="ids", pg=pg)),
        drop_escalations=delete(ESC).where(any_of(ESC.c.example_id, name="ids", pg=pg)),
        add_escalations=insert(ESC),
        move=update(E).where(any_of(E.c.id, name="ids", pg=pg)).values(
            status=bindparam("new_status"), updated_at=bindparam("at", type_=E.c.updated_at.type)),
    )


def decide_many(session: Session, requests: list[DecisionRequest], *, atomic: bool = False) -> list[Any]:
    """Decide a batch set-based: a handful of statements whatever its size. Returns, per request, the
    response dict or the PedigreeError refusing it; a refused request writes nothing. With `atomic`,
    the first refusal is raised before anything is written."""
    now = utcnow()
    out: list[Any] = [None] * len(requests)
    ids: list[uuid.UUID | None] = []
    for i, rq in enumerate(requests):
        try:
            ids.append(uuid.UUID(str(rq.example_id)))
        except ValueError:
            ids.append(None)
            out[i] = NotFound(f"example {rq.example_id} not found", details={"example": str(rq.example_id)})
            continue
        if not rq.actor.is_human:
            out[i] = Forbidden("machine keys may attach suggestions but not decide", code="not_human")
    _serialize_writers(session)
    b = _load_batch(session, sorted({e for e in ids if e is not None}), {rq.actor.ref for rq in requests})

    reviews, lease_gone, esc_gone, esc_new = [], set(), set(), []
    moves: dict[str, list[tuple[uuid.UUID, str, uuid.UUID, str, Actor]]] = defaultdict(list)
    for i, rq in enumerate(requests):
        if out[i] is not None:
            continue
        eid = ids[i]
        try:
            ex = _check(b, eid, rq, now)
        except PedigreeError as e:
            out[i] = e
            continue
        actor, data = rq.actor, rq.data
        policy = b.policies[ex.dataset_id]
        rid = ex.current_revision_id
        lease = b.leases.pop(eid, None)
        if lease is not None:
            lease_gone.add(eid)
        was_escalated = eid in b.escalated
        review_id = new_id()
        reviews.append({"id": review_id, "example_id": eid, "dataset_id": ex.dataset_id, "revision_id": rid,
                        "reviewer": actor.ref, "reviewer_key_id": actor.key_id, "decision": data.decision,
                        "reason_code": data.reason_code, "comment": data.comment, "created_at": now,
                        "leased_at": lease.acquired_at if lease is not None and lease.holder_key_id == actor.key_id
                        else None, "resolves_escalation": was_escalated})
        b.decided.add((rid, actor.key_id))
        tally = b.tallies[rid]
        tally[data.decision] += 1
        if was_escalated:
            outcome = "approved" if data.decision == "approve" else (
                "changes_requested" if data.decision == "request_changes" or policy.rejection != "final"
                else "rejected")
            b.escalated.discard(eid)
            esc_gone.add(eid)
        else:
            outcome = _outcome(policy, tally, data.decision)
        audit.record(session, actor=actor.ref, action="review.decided", entity_type="example", entity_id=eid,
                     payload={"review_id": str(review_id), "revision_id": str(rid), "decision": data.decision,
                              "reason_code": data.reason_code,
                              # Comments are free text and may quote personal data; the review row keeps them.
                              "has_comment": bool(data.comment), "approvals": tally["approve"],
                              "required_approvals": policy.required_approvals, "outcome": outcome or "pending"})
        if outcome == "escalate":
            b.escalated.add(eid)
            esc_new.append({"example_id": eid, "dataset_id": ex.dataset_id, "revision_id": rid, "created_at": now,
                            "reason": f"conflicting decisions: {dict(tally)}"})
            audit.record(session, actor=actor.ref, action="review.escalated", entity_type="example", entity_id=eid,
                         payload={"revision_id": str(rid), "tally": dict(tally)})
        elif outcome is not None:
            why = ("escalation resolved by an admin" if was_escalated else
                   f"review policy ({policy.conflict_resolution}, {policy.required_approvals} approvals)")
            moves[outcome].append((eid, b.status[eid], rid, why, actor))
            b.status[eid] = outcome
        review = {"id": str(review_id), "example_id": str(eid), "revision_id": str(rid), "reviewer": actor.ref,
                  "decision": data.decision, "reason_code": data.reason_code, "comment": data.comment,
                  "created_at": _iso(now)}
        # The review at the top level (it is what was created), the example's new state beside it.
        out[i] = {**review, "status": b.status[eid], "review": review,
                  "example": {"id": str(eid), "status": b.status[eid], "revision_id": str(rid),
                              "approvals": tally["approve"], "required_approvals": policy.required_approvals,
                              "escalated": outcome == "escalate"}}
    if atomic:
        for i, r in enumerate(out):
            if isinstance(r, PedigreeError):
                r.details = {"example_id": str(requests[i].example_id), "cause": r.details}
                raise r
    conn = session.connection()
    w = _write_statements(conn.dialect.name == "postgresql")
    if reviews:
        # The unique constraint backs the in-memory check up: a collision fails the whole batch, which
        # the caller then retries request by request.
        conn.execute(w.add_reviews, reviews)
    if lease_gone:
        conn.execute(w.drop_leases, {"ids": sorted(lease_gone)})
    if esc_gone:
        conn.execute(w.drop_escalations, {"ids": sorted(esc_gone)})
    if esc_new:
        conn.execute(w.add_escalations, esc_new)
    for to, rows in moves.items():
        conn.execute(w.move, {"ids": [r[0] for r in rows], "new_status": to, "at": now})
        for eid, before, rid, why, actor in rows:
            audit.record(session, actor=actor.ref, action="example.status_changed", entity_type="example",
                         entity_id=eid, payload={"from": before, "to": to, "why": why, "revision_id": str(rid)})
    return out


def decide(session: Session, *, example_id: str | uuid.UUID, actor: Actor, data: ReviewIn) -> dict[str, Any]:
    (result,) = decide_many(session, [DecisionRequest(example_id, actor, data)])
    if isinstance(result, PedigreeError):
        raise result
    return result


def decide_bulk(session: Session, *, actor: Actor, data: BulkReviewIn) -> dict[str, Any]:
    """One decision for many examples; a refused item leaves no trace and the others go through,
    unless `atomic` asks for all or nothing."""
    reqs = [DecisionRequest(it.example_id, actor, ReviewIn(decision=data.decision, revision_id=it.revision_id,
                                                           reason_code=data.reason_code, comment=data.comment))
            for it in data.items]
    results = []
    for rq, r in zip(reqs, decide_many(session, reqs, atomic=data.atomic), strict=True):
        if isinstance(r, PedigreeError):
            results.append({"example_id": str(rq.example_id), "ok": False,
                            "error": {"code": r.code, "message": r.message, "details": r.details}})
        else:
            results.append({"example_id": str(rq.example_id), "ok": True, "status": r["example"]["status"],
                            "review_id": r["review"]["id"]})
    return {"decided": sum(r["ok"] for r in results), "refused": sum(not r["ok"] for r in results),
            "items": results}


# --- edits -------------------------------------------------------------------------------------------------

def edit(session: Session, *, example_id: str | uuid.UUID, actor: Actor, data: RevisionIn) -> dict[str, Any]:
    """A new immutable revision (reason reviewer_edit). Approvals are per revision, so they reset;
    the example re-enters the pipeline (quality, PII, dedup) and comes back to pending_review."""
    ex = _lock_example(session, example_id)
    ds = session.get(Dataset, ex.dataset_id)
    policy = policy_of(ds)
    if actor.role == "reviewer" and not policy.reviewers_may_edit:
        raise Forbidden("this dataset's policy does not let reviewers edit", code="edits_disabled")
    if ex.status not in EDITABLE or ex.stage is not None:
        raise InvalidState(f"example is {ex.status}; only {', '.join(EDITABLE)} examples can be edited",
                           code="not_editable", details={"status": ex.status, "stage": ex.stage})
    if data.base_revision_id is not None and data.base_revision_id != ex.current_revision_id:
        raise Conflict("the revision you edited is no longer current", code="stale_revision",
                       details={"base_revision_id": str(data.base_revision_id),
                                "current_revision_id": str(ex.current_revision_id)})
    now = utcnow()
    lease = _lease_row(session, ex.id)
    if lease is not None and lease.holder_key_id != actor.key_id and _aware(lease.expires_at) > now:
        raise Conflict("another reviewer holds this example", code="leased",
                       details={"holder": lease.holder, "expires_at": _iso(lease.expires_at)})
    s = get_settings()
    try:
        content = normalize(ds.format, data.content, max_chars=s.max_field_chars, max_messages=s.max_messages)
    except FieldError as fe:
        raise ValidationFailed(f"content.{fe.field}: {fe.message}",
                               details=[{"field": f"content.{fe.field}", "code": fe.code, "message": fe.message}]) from None
    current = session.get(ExampleRevision, ex.current_revision_id)
    sha = content_sha256(content)
    if current is not None and sha == current.content_sha256:
        raise ValidationFailed("the edit does not change the content", code="unchanged",
                               details=[{"field": "content", "code": "unchanged", "message": "same as the current revision"}])
    seq = (session.scalar(select(func.max(REV.c.seq)).where(REV.c.example_id == ex.id)) or 0) + 1
    rev = ExampleRevision(id=new_id(), example_id=ex.id, seq=seq, content=content, content_sha256=sha,
                          parent_id=ex.current_revision_id, reason="reviewer_edit", author=actor.ref,
                          comment=data.comment, created_at=now)
    session.add(rev)
    session.flush()
    before = ex.status
    first = stages.next_stage(None)
    session.execute(update(E).where(E.c.id == ex.id).values(current_revision_id=rev.id, status="ingested",
                                                            stage=first, updated_at=now))
    ex.current_revision_id, ex.status, ex.stage = rev.id, "ingested", first
    session.execute(delete(L).where(L.c.example_id == ex.id))
    session.execute(delete(ESC).where(ESC.c.example_id == ex.id))
    audit.record(session, actor=actor.ref, action="example.revised", entity_type="example", entity_id=ex.id,
                 payload={"revision_id": str(rev.id), "parent_id": str(rev.parent_id), "seq": seq,
                          "content_sha256": sha, "reason": "reviewer_edit"})
    audit.record(session, actor=actor.ref, action="example.status_changed", entity_type="example",
                 entity_id=ex.id, payload={"from": before, "to": "ingested", "why": "edited; re-enters the pipeline",
                                           "revision_id": str(rev.id)})
    pipeline.enqueue_stage(session, first, [ex.id])
    revision = examples.revision_view(rev) | {"comment": rev.comment}
    # The new revision at the top level (it is what was created), the example's state beside it.
    return {**revision, "example_id": str(ex.id), "status": "ingested", "stage": first, "revision": revision}


# --- suggestions -------------------------------------------------------------------------------------------

def add_suggestion(session: Session, *, example_id: str | uuid.UUID, actor: Actor,
                   data: SuggestionIn) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    rid = data.revision_id or ex.current_revision_id
    if data.revision_id is not None and not session.scalar(
            select(REV.c.id).where(REV.c.id == rid, REV.c.example_id == ex.id)):
        raise ValidationFailed("revision_id is not a revision of this example",
                               details=[{"field": "revision_id", "code": "invalid", "message": "unknown revision"}])
    s = ReviewSuggestion(id=new_id(), example_id=ex.id, revision_id=rid, source=actor.ref, model=data.model,
                         label=data.label, score=data.score, reason_code=data.reason_code, comment=data.comment,
                         created_at=utcnow())
    session.add(s)
    session.flush()
    audit.record(session, actor=actor.ref, action="review.suggestion_added", entity_type="example", entity_id=ex.id,
                 payload={"suggestion_id": str(s.id), "revision_id": str(rid), "model": data.model,
                          "label": data.label, "score": data.score})
    return _suggestion_out(s)


def _suggestion_out(s: ReviewSuggestion) -> dict[str, Any]:
    return {"id": str(s.id), "revision_id": str(s.revision_id), "source": s.source, "model": s.model,
            "label": s.label, "score": s.score, "reason_code": s.reason_code, "comment": s.comment,
            "created_at": _iso(s.created_at)}


# --- the example view's review block -----------------------------------------------------------------------

def review_view(session: Session, ex: Example, out: dict[str, Any], actor: Actor) -> None:
    """Example view hook (installed by app.wiring): what a reviewer needs next to the content."""
    ds = session.get(Dataset, ex.dataset_id)
    policy = policy_of(ds)
    rid = ex.current_revision_id
    reviews = session.execute(
        select(R.c.id, R.c.reviewer, R.c.decision, R.c.reason_code, R.c.comment, R.c.created_at, R.c.revision_id)
        .where(R.c.example_id == ex.id).order_by(R.c.created_at)).all()
    lease = _lease_row(session, ex.id)
    sugg = session.scalars(select(ReviewSuggestion).where(ReviewSuggestion.example_id == ex.id)
                           .order_by(ReviewSuggestion.created_at.desc()).limit(5)).all()
    out["review"] = {
        "approvals": sum(1 for r in reviews if r.revision_id == rid and r.decision == "approve"),
        "required_approvals": policy.required_approvals,
        "four_eyes": policy.four_eyes,
        "reason_codes": policy.reason_codes,
        "escalated": session.get(ReviewEscalation, ex.id) is not None,
        "lease": None if lease is None else {"holder": lease.holder, "expires_at": _iso(lease.expires_at),
                                             "live": _aware(lease.expires_at) > utcnow()},
        "decisions": [{"id": str(r.id), "reviewer": r.reviewer, "decision": r.decision, "reason_code": r.reason_code,
                       "comment": r.comment, "created_at": _iso(r.created_at), "revision_id": str(r.revision_id),
                       "current": r.revision_id == rid} for r in reviews],
    }
    out["suggestions"] = [_suggestion_out(s) for s in sugg]


# --- stats -------------------------------------------------------------------------------------------------

def stats(session: Session, *, dataset: Dataset, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    counts = dict(session.execute(select(E.c.status, func.count()).where(E.c.dataset_id == dataset.id)
                                  .group_by(E.c.status)).all())
    rows = session.execute(
        select(R.c.example_id, R.c.revision_id, R.c.reviewer, R.c.decision, R.c.created_at, R.c.leased_at,
               REV.c.created_at.label("revision_created_at"))
        .join(REV, REV.c.id == R.c.revision_id)
        .where(R.c.dataset_id == dataset.id)).all()
    escalated = session.scalar(select(func.count()).select_from(ESC).where(ESC.c.dataset_id == dataset.id)) or 0
    hour_ago, day_ago = now - dt.timedelta(hours=1), now - dt.timedelta(days=1)

    def summary(rs: list[Any]) -> dict[str, Any]:
        waits = [(_aware(r.created_at) - _aware(r.revision_created_at)).total_seconds() for r in rs]
        handling = [(_aware(r.created_at) - _aware(r.leased_at)).total_seconds() for r in rs if r.leased_at]
        by = Counter(r.decision for r in rs)
        return {
            "decisions": len(rs), **{d: by[d] for d in DECISIONS},
            "decisions_last_hour": sum(1 for r in rs if _aware(r.created_at) >= hour_ago),
            "decisions_last_day": sum(1 for r in rs if _aware(r.created_at) >= day_ago),
            # From the revision's creation to the decision: queue wait plus reading time.
            "median_seconds_to_decision": round(statistics.median(waits), 3) if waits else None,
            # From taking the lease to deciding: the reviewer's own time on the item.
            "median_handling_seconds": round(statistics.median(handling), 3) if handling else None,
        }

    by_reviewer: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_reviewer[r.reviewer].append(r)
    units = [(str(r.revision_id), r.reviewer, r.decision) for r in rows]
    agree = agreement.summarise(units)
    reviewers = []
    for name, rs in sorted(by_reviewer.items()):
        reviewers.append({"reviewer": name, **summary(rs),
                          "agreement_with_others": agree["per_reviewer"].get(name)})
    return {
        "dataset": {"id": str(dataset.id), "name": dataset.name,
                    "pending": counts.get("pending_review", 0), "approved": counts.get("approved", 0),
                    "rejected": counts.get("rejected", 0), "changes_requested": counts.get("changes_requested", 0),
                    "escalated": escalated, "in_pipeline": counts.get("ingested", 0) + counts.get("scrubbed", 0),
                    **summary(list(rows))},
        "agreement": {k: v for k, v in agree.items() if k != "per_reviewer"},
        "reviewers": reviewers,
        "policy": policy_of(dataset).full(),
    }


def progress(session: Session, *, dataset: Dataset, actor: Actor) -> dict[str, Any]:
    """Small and fast: the page's progress bar after every decision."""
    counts = dict(session.execute(select(E.c.status, func.count()).where(E.c.dataset_id == dataset.id)
                                  .group_by(E.c.status)).all())
    mine = session.scalar(select(func.count()).select_from(R).where(R.c.dataset_id == dataset.id,
                                                                    R.c.reviewer_key_id == actor.key_id)) or 0
    total = sum(counts.values()) - counts.get("duplicate", 0) - counts.get("erased", 0)
    done = counts.get("approved", 0) + counts.get("rejected", 0)
    return {"pending": counts.get("pending_review", 0), "approved": counts.get("approved", 0),
            "rejected": counts.get("rejected", 0), "changes_requested": counts.get("changes_requested", 0),
            "done": done, "total": total, "mine": mine}


__all__ = ["add_suggestion", "decide", "decide_bulk", "edit", "next_items", "policy_of", "progress",
           "release_lease", "renew_lease", "review_view", "stats"]


# ---------------------------------------------------------------------------------------------------------
# Reviewer-page sessions ended by sign-out

_REVOKED = ReviewSessionRevocation.__table__


def page_session_revoked(session: Session, session_id: str) -> bool:
    return session.connection().execute(
        select(_REVOKED.c.session_id).where(_REVOKED.c.session_id == session_id)).first() is not None


def revoke_page_session(session: Session, *, session_id: str, expires_at: dt.datetime) -> None:
    conn = session.connection()
    # Past its lifetime a cookie is refused when unsealed anyway, so its row can go; sign-outs are rare
    # enough that this is all the cleaning the table needs.
    conn.execute(delete(_REVOKED).where(_REVOKED.c.expires_at < utcnow()))
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # Two tabs signing one session out at once: the second insert is a no-op, not a 500.
    conn.execute(ins(_REVOKED).values(session_id=session_id, expires_at=expires_at).on_conflict_do_nothing())
