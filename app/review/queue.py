"""The review queue: the key check and dataset lookup in one round trip, the pick that hands each
caller items nobody else holds (each with a lease), and renewing or releasing a lease."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, delete, exists, func, literal_column, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.core.auth import KEY_COLUMNS, Actor, check_key, check_role, key_prefix, previous_secrets
from app.core.errors import Conflict, Forbidden, NotFound
from app.core.sql import any_of, aware, is_pg, iso
from app.examples import service as examples
from app.models.auth import ApiKey, WorkspaceMember
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example
from app.review.pairwise import blind_view as pairwise_view
from app.review.schemas import PAIRWISE_REASON_CODES
from app.review.service import (
    AUTHORED,
    ESC,
    REV,
    REV_COLS,
    E,
    L,
    R,
    lease_row,
    lock_example,
    policy_of,
    serialize_writers,
)


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
    # The caller's role in the dataset's workspace, in the same round trip (null: not a member).
    W = WorkspaceMember.__table__
    ws_role = (select(W.c.role).where(W.c.key_id == K.c.id, W.c.workspace_id == D.c.workspace_id)
               .scalar_subquery())
    return (select(*KEY_COLUMNS, D.c.id.label("ds_id"), D.c.name.label("ds_name"), D.c.review_policy,
                   D.c.format.label("ds_format"), own.label("has_own"), ws_role.label("ws_role"))
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
    conn = session.connection()
    row = conn.execute(_context_statement("ds_id" in params), {**params, "prefix": prefix, "now": utcnow()}).first()
    if row is None and (old := previous_secrets(conn, [prefix]).get(prefix)) is not None:
        # A rotated-out secret in its overlap window: checked, then the context read by the key's current prefix.
        actor = check_key(old, token)
        row = conn.execute(_context_statement("ds_id" in params), {**params, "prefix": old.prefix,
                                                                   "now": utcnow()}).first()
    else:
        actor = check_key(row, token)
    if row.ws_role not in roles:  # a reviewer in this dataset's workspace passes whatever the key's own role
        check_role(actor, roles)
    # Another workspace's dataset is not found, as a missing one; a member in another role is refused.
    if row.ds_id is None or (actor.role != "admin" and row.ws_role is None):
        raise NotFound(f"dataset {ref} not found", details={"dataset": str(ref)})
    if actor.role != "admin" and row.ws_role not in roles:
        raise Forbidden(f"role {row.ws_role!r} in this workspace may not do this",
                        details={"role": row.ws_role, "allowed": sorted({*roles, "admin"})})
    return actor, SimpleNamespace(id=row.ds_id, name=row.ds_name, review_policy=row.review_policy,
                                  format=row.ds_format), bool(row.has_own)


# Picks per request on PostgreSQL: the first, then one per collision with another reviewer's lease.
PICK_ATTEMPTS = 16


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
        # The content comes back from the same statement: pick, lease and read in one round trip. So
        # does how many rows the pick locked (one row with no lease when it granted none): more locked
        # than granted means another reviewer's lease committed after this statement's snapshot, which
        # the snapshot could not see (see next_items), not that the queue ran dry.
        got = stmt.cte("granted")
        locked = select(func.count().label("locked")).select_from(picked).subquery("locked")
        stmt = (select(locked.c.locked, got, *REV_COLS)
                .select_from(locked.outerjoin(got.join(REV, REV.c.id == got.c.revision_id), true())))
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
    pg = is_pg(conn)
    serialize_writers(session)

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

    # A row another reviewer leased after this statement's snapshot is still lockable (their statement
    # locked the example row only until its commit, and the lease lives in another table, so
    # PostgreSQL's recheck of the locked row does not see it) but refused by the upsert. The statement
    # says how many rows it locked: fewer granted than locked is such a collision, and the next
    # statement (a fresh snapshot, autocommit) sees that lease and passes the row by; fewer locked than
    # wanted is the queue running dry for this caller, and it stops there. (Stopping after two empty
    # tries instead answered "no items" with thousands pending, about once in 300-1,300 cycles with
    # four reviewers.) Each collision is another reviewer's grant, so retrying while they happen
    # cannot spin without the queue moving; the bound is a backstop.
    for _attempt in range(PICK_ATTEMPTS if pg else 1):
        want = limit - len(granted)
        if want <= 0:
            break
        stmt = _pick_statement(pg, policy.four_eyes, actor.role == "admin", bool(exclude))
        params = {"ds": dataset.id, "now": now, "expires": expires, "key": actor.key_id, "ref": actor.ref,
                  "want": want, "authored": list(AUTHORED)}
        if exclude:
            params["exclude"] = exclude
        locked = got = 0
        for r in conn.execute(stmt, params):
            if pg:
                locked = r.locked
                if r.example_id is None:  # the one row of a pick that granted nothing
                    continue
            granted[r.example_id] = r
            got += 1
        if not pg or got == locked < want:
            break  # all it locked was granted and that was less than wanted: nothing more is free now
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
                                "dataset_id": str(dataset.id), "lease_expires_at": iso(ls.expires_at),
                                "leased_at": iso(ls.acquired_at),
                                "revision": {"id": str(ls.revision_id), "seq": rv.seq, "reason": rv.reason, "author": rv.author,
                                             "content": rv.content, "content_sha256": rv.content_sha256},
                                "quality_flags": (rv.quality or {}).get("flags", [])}
        if with_view:
            item["example"] = examples.view(session, exs[eid], actor)
        if dataset.format == "preference" and rv.content:
            item["pairwise"] = {**pairwise_view(rv.content, actor.key_id, eid), "reason_codes": list(PAIRWISE_REASON_CODES)}
        out.append(item)
    return out


def renew_lease(session: Session, *, example_id: str | uuid.UUID, actor: Actor) -> dict[str, Any]:
    ex = lock_example(session, example_id)
    lease = lease_row(session, ex.id)
    now = utcnow()
    if lease is None or lease.holder_key_id != actor.key_id:
        raise Conflict("you hold no lease on this example", code="not_leased")
    if aware(lease.expires_at) <= now:
        raise Conflict("your lease on this example expired; fetch it from the queue again", code="lease_expired",
                       details={"expired_at": iso(lease.expires_at)})
    policy = policy_of(session.get(Dataset, ex.dataset_id))
    expires = now + dt.timedelta(seconds=policy.lease_seconds)
    session.execute(update(L).where(L.c.example_id == ex.id).values(expires_at=expires))
    return {"example_id": str(ex.id), "revision_id": str(lease.revision_id), "lease_expires_at": iso(expires)}


def release_lease(session: Session, *, example_id: str | uuid.UUID, actor: Actor) -> dict[str, Any]:
    ex = lock_example(session, example_id)
    n = session.execute(delete(L).where(L.c.example_id == ex.id, L.c.holder_key_id == actor.key_id)).rowcount
    return {"example_id": str(ex.id), "released": bool(n)}
