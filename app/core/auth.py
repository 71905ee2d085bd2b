"""API keys and roles.

A key looks like `pdg_<prefix>_<secret>`: the prefix finds the row, the sha256 of the whole key is
compared in constant time. Keys are shown once, at creation, and never stored in the clear.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.db import SessionDep, get_engine
from app.core.errors import Forbidden, Unauthorized, ValidationFailed
from app.core.sql import any_of, aware
from app.models.auth import ROLES, ApiKey, ApiKeyPreviousSecret, Workspace, WorkspaceMember

KEY_PREFIX = "pdg"
log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Actor:
    key_id: uuid.UUID
    name: str
    role: str
    is_human: bool = True
    # (workspace id, role) per membership; admin keys are global and hold none (docs/security.md).
    memberships: tuple[tuple[uuid.UUID, str], ...] = ()
    # True once the memberships were loaded for a request; an actor a worker, the CLI or a test builds
    # by hand is not scoped (like SYSTEM), which is what `scoped_role` reads.
    scoped: bool = False

    def scoped_role(self, workspace_id: uuid.UUID) -> str | None:
        """The role to check in a workspace: the membership's (None: not a member) for a scoped key,
        the key's own role for admin and for unscoped actors."""
        if self.role == "admin" or not self.scoped:
            return self.role
        return dict(self.memberships).get(workspace_id)

    @property
    def member_roles(self) -> frozenset[str]:
        return frozenset(r for _, r in self.memberships)

    @property
    def ref(self) -> str:
        """Stable identity used in provenance, reviews and audit events (names need not be unique)."""
        return f"{self.name}#{str(self.key_id)[-8:]}"


SYSTEM = Actor(key_id=uuid.UUID(int=0), name="system", role="admin", is_human=False)


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    prefix = secrets.token_hex(6)
    return prefix, f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"


def create_key(session: Session, *, name: str, role: str, created_by: str | None = None,
               is_human: bool = True, expires_at: dt.datetime | None = None,
               workspace_id: uuid.UUID | None = None) -> tuple[ApiKey, str]:
    """A new key; a non-admin key becomes a member of `workspace_id` (default: the `default` workspace)
    with its role, so a key made by the CLI or the API works where keys always did."""
    if role not in ROLES:
        raise ValidationFailed(
            f"unknown role {role!r}", details=[{"field": "role", "code": "invalid",
                                                "message": f"one of {', '.join(ROLES)}"}]
        )
    prefix, key = _new_secret()
    row = ApiKey(name=name, role=role, prefix=prefix, key_sha256=_sha256(key), created_by=created_by,
                 is_human=is_human, expires_at=expires_at)
    session.add(row)
    session.flush()
    if role != "admin":
        ws = workspace_id or session.scalar(select(Workspace.id).where(Workspace.name == "default"))
        if ws is not None:
            session.add(WorkspaceMember(workspace_id=ws, key_id=row.id, role=role, created_by=created_by))
            session.flush()
    return row, key


def rotate_key(session: Session, row: ApiKey, *, overlap_s: float) -> tuple[str, dt.datetime]:
    """A new secret for the same key (same id, role, memberships and grants). The old secret keeps
    working until the overlap window ends, so clients can be redeployed with the new one without an
    outage; `overlap_s=0` ends it at once. Returns the new secret and the old one's end."""
    now = utcnow()
    until = now + dt.timedelta(seconds=overlap_s)
    session.add(ApiKeyPreviousSecret(prefix=row.prefix, key_id=row.id, key_sha256=row.key_sha256,
                                     valid_until=until, rotated_at=now))
    row.prefix, key = _new_secret()
    row.key_sha256 = _sha256(key)
    row.rotated_at = now
    session.flush()
    return key, until


def create_person_key(session: Session, *, name: str, role: str) -> ApiKey:
    """The key that acts for a person signed in through SSO (app/sso). Its secret is generated and thrown
    away, so it authenticates nothing on /v1; it exists so that reviews, leases, four eyes and the
    workspace checks name a person exactly as they name a key. No membership: the groups give those."""
    prefix, key = _new_secret()
    row = ApiKey(name=name, role=role, prefix=prefix, key_sha256=_sha256(key), created_by="sso", is_human=True)
    session.add(row)
    session.flush()
    return row


def key_prefix(key: str) -> str:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        raise Unauthorized("malformed API key")
    return parts[1]


def check_key(row, key: str) -> Actor:  # an ApiKey row or its columns
    if row is None or not hmac.compare_digest(row.key_sha256, _sha256(key)):
        raise Unauthorized("invalid API key")
    if row.revoked_at is not None:
        raise Unauthorized("API key revoked")
    now = utcnow()
    if row.expires_at is not None and aware(row.expires_at) <= now:
        raise Unauthorized("API key expired", code="key_expired")
    # Only rows found by a rotated-out prefix carry `valid_until` (the end of the rotation's overlap).
    until = row._mapping.get("valid_until") if hasattr(row, "_mapping") else None
    if until is not None and aware(until) <= now:
        raise Unauthorized("API key rotated: this secret's overlap window has ended", code="key_rotated")
    USES.note(row.id)
    return Actor(key_id=row.id, name=row.name, role=row.role, is_human=row.is_human)


# Table columns and statements built once: every request authenticates, and an ORM entity load
# (identity map, instance state) or a statement built per call cost several times the query itself.
_K = ApiKey.__table__
_P = ApiKeyPreviousSecret.__table__
KEY_COLUMNS = (_K.c.id, _K.c.name, _K.c.role, _K.c.is_human, _K.c.key_sha256, _K.c.revoked_at, _K.c.prefix,
               _K.c.expires_at)
_BY_PREFIX = select(*KEY_COLUMNS).where(_K.c.prefix == bindparam("prefix"))
_W = WorkspaceMember.__table__
# The batch's keys with their workspace roles, one row per membership (a key with none: one row, the
# membership columns null). One round trip where the key query and the memberships query were two.
_BY_PREFIXES_WITH_MEMBERSHIPS = {
    pg: select(*KEY_COLUMNS, _W.c.workspace_id.label("m_workspace_id"), _W.c.role.label("m_role"))
    .select_from(_K.outerjoin(_W, _W.c.key_id == _K.c.id))
    .where(any_of(_K.c.prefix, name="prefixes", pg=pg)) for pg in (False, True)}
# A rotated-out secret: the key's current columns with the old secret's hash and its end, found by
# the old prefix. Asked only when the prefix is not a current one (a rare path: overlap or a bad key).
_PREVIOUS_COLUMNS = tuple(c for c in KEY_COLUMNS if c.name != "key_sha256") + (
    _P.c.key_sha256, _P.c.valid_until, _P.c.prefix.label("old_prefix"))
_BY_OLD_PREFIXES = {pg: select(*_PREVIOUS_COLUMNS).select_from(_P.join(_K, _K.c.id == _P.c.key_id))
                    .where(any_of(_P.c.prefix, name="prefixes", pg=pg)) for pg in (False, True)}


def previous_secrets(conn: Any, prefixes: list[str]) -> dict[str, Any]:
    """Rows for rotated-out prefixes (old prefix -> row with `valid_until`); `check_key` takes them."""
    stmt = _BY_OLD_PREFIXES[conn.dialect.name == "postgresql"]
    return {r.old_prefix: r for r in conn.execute(stmt, {"prefixes": sorted(set(prefixes))})}


def authenticate(session: Session, key: str) -> Actor:
    prefix = key_prefix(key)
    conn = session.connection()
    row = conn.execute(_BY_PREFIX, {"prefix": prefix}).first()
    if row is None:
        row = previous_secrets(conn, [prefix]).get(prefix)
    return check_key(row, key)


def authenticate_many(session: Session, keys: set[str]) -> dict[str, Actor | Unauthorized]:
    """`authenticate` for a batch of keys, with their workspace roles, in one query (the review
    committer's batches carry the keys of many reviewers; a query each was up to half of a batch's
    round trips). Read in the caller's transaction on every call: nothing is cached, so a revoked key,
    an expiry or a removed membership counts from the next batch."""
    out: dict[str, Actor | Unauthorized] = {}
    prefixes: dict[str, str] = {}
    for key in keys:
        try:
            prefixes[key] = key_prefix(key)
        except Unauthorized as e:
            out[key] = e
    rows = {}
    held: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
    if prefixes:
        conn = session.connection()
        pg = conn.dialect.name == "postgresql"
        for r in conn.execute(_BY_PREFIXES_WITH_MEMBERSHIPS[pg], {"prefixes": sorted(set(prefixes.values()))}):
            rows.setdefault(r.prefix, r)
            ms = held.setdefault(r.id, [])
            if r.m_workspace_id is not None:
                ms.append((r.m_workspace_id, r.m_role))
        missing = [p for p in prefixes.values() if p not in rows]
        if missing:
            old = previous_secrets(conn, missing)
            rows.update(old)
            # Keys presented by a rotated-out secret: their memberships in a query of their own (rare).
            if ids := sorted({r.id for r in old.values()} - held.keys()):
                for r in conn.execute(_MEMBERSHIPS_MANY[pg], {"key_ids": ids}):
                    held.setdefault(r.key_id, []).append((r.workspace_id, r.role))
    for key, prefix in prefixes.items():
        try:
            out[key] = check_key(rows.get(prefix), key)
        except Unauthorized as e:
            out[key] = e
    if any(isinstance(a, Actor) and a.role != "admin" for a in out.values()):
        for key, a in out.items():
            if isinstance(a, Actor) and a.role != "admin":
                out[key] = Actor(key_id=a.key_id, name=a.name, role=a.role, is_human=a.is_human,
                                 memberships=tuple(held.get(a.key_id, ())), scoped=True)
    return out


class KeyUses:
    """`api_keys.last_used_at`, written off the request path: a request only notes its key in memory
    (a dict lookup), and a daemon thread writes the noted keys in one statement every few seconds.
    A key is noted at most once per `key_last_used_interval_s` per process, so a busy key costs one
    UPDATE per interval and API process, not one per request, and no request waits on (or holds) a
    lock on its key's row. The column is therefore "last used", accurate to the interval."""

    def __init__(self) -> None:
        self._noted: dict[uuid.UUID, float] = {}
        self._pending: dict[uuid.UUID, dt.datetime] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.noted = 0  # how many uses were noted for writing (tests count coalescing with it)

    def note(self, key_id: uuid.UUID) -> None:
        now = time.monotonic()
        last = self._noted.get(key_id)
        if last is not None and now - last < get_settings().key_last_used_interval_s:
            return
        with self._lock:
            self._noted[key_id] = now
            self._pending[key_id] = utcnow()
            self.noted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="key-last-used", daemon=True)
                self._thread.start()

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        stmt = update(_K).where(_K.c.id == bindparam("b_id")).values(last_used_at=bindparam("b_at"))
        try:
            with get_engine().begin() as conn:
                conn.execute(stmt, [{"b_id": k, "b_at": at} for k, at in batch.items()])
        except Exception:  # a lost write of a "last used" hint must never fail a request or kill the thread
            log.warning("writing api_keys.last_used_at failed", exc_info=True)
            return 0
        return len(batch)

    def forget(self) -> None:
        """Drops what was noted (tests switch databases between cases)."""
        with self._lock:
            self._noted.clear()
            self._pending.clear()

    def _run(self) -> None:
        while True:
            time.sleep(min(5.0, get_settings().key_last_used_interval_s))
            self.flush()


USES = KeyUses()
atexit.register(USES.flush)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise Unauthorized("Authorization header must be 'Bearer <key>'")
    # The reviewer page keeps the key in an HttpOnly session cookie instead of the header.
    session_key = request.scope.get("session", {}).get("api_key") if "session" in request.scope else None
    return session_key


# Workspace scoping (docs/security.md, "Workspaces"). The request's session carries the caller and the
# route's roles; every lookup that resolves a dataset (by id, or through what hangs off it) calls
# `check_workspace`, so the scoping lives in those few lookups and not in each route.
SCOPE = "pedigree_scope_actor"
ALLOWED = "pedigree_scope_allowed"
WORKSPACE = "pedigree_workspace"
# {"iss", "sub"} of a person signed in to a web page through SSO: audit events of the request carry it.
PERSON = "pedigree_person"
_MEMBERSHIPS = select(WorkspaceMember.workspace_id, WorkspaceMember.role).where(
    WorkspaceMember.key_id == bindparam("key_id"))
_MEMBERSHIPS_MANY = {pg: select(_W.c.key_id, _W.c.workspace_id, _W.c.role).where(
    any_of(_W.c.key_id, name="key_ids", pg=pg)) for pg in (False, True)}


def with_memberships(session: Session, actor: Actor) -> Actor:
    """The actor with its workspace roles, installed as the session's scope (one indexed query; none
    for admin, who is global)."""
    if actor.role != "admin":
        rows = session.connection().execute(_MEMBERSHIPS, {"key_id": actor.key_id}).all()
        actor = Actor(key_id=actor.key_id, name=actor.name, role=actor.role, is_human=actor.is_human,
                      memberships=tuple((r.workspace_id, r.role) for r in rows), scoped=True)
    session.info[SCOPE] = actor
    return actor


def install_scope(session: Session, actor: Actor, roles: tuple[str, ...]) -> Session:
    """Scopes a session the request opened itself (imports run in their own transactions) like the
    request's: `actor` as the dependency loaded it, `roles` the route's."""
    session.info[SCOPE] = actor
    session.info[ALLOWED] = frozenset(roles) | {"admin"}
    return session


def scope_actor(session: Session) -> Actor | None:
    return session.info.get(SCOPE)


def visible_workspaces(session: Session, roles: tuple[str, ...] | None = None) -> list[uuid.UUID] | None:
    """The workspaces the request may see (where the caller holds one of `roles`, when given); None:
    all (admin, or no caller: workers, the CLI)."""
    actor = session.info.get(SCOPE)
    if actor is None or actor.role == "admin":
        return None
    return [w for w, r in actor.memberships if roles is None or r in roles]


def check_workspace(session: Session, workspace_id: uuid.UUID, missing: Exception) -> None:
    """404 (`missing`, the same error an unknown id gets) when the caller holds no role in the workspace:
    a 403 would confirm the thing exists. 403 when it holds one there that the route does not allow.
    Also remembers the workspace for the request's audit events."""
    session.info[WORKSPACE] = workspace_id
    actor = session.info.get(SCOPE)
    if actor is None or actor.role == "admin":
        return
    role = dict(actor.memberships).get(workspace_id)
    if role is None:
        raise missing
    allowed = session.info.get(ALLOWED)
    if allowed is not None and role not in allowed:
        raise Forbidden(f"role {role!r} in this workspace may not do this; needs one of {sorted(allowed)}",
                        details={"role": role, "allowed": sorted(allowed)})


def current_actor(request: Request, session: SessionDep) -> Actor:
    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    actor = with_memberships(session, authenticate(session, token))
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def check_role(actor: Actor, roles: tuple[str, ...], what: str = "do this") -> Actor:
    """Admin passes every check; everyone else needs one of `roles`, as its own role or in one of its
    workspaces (which workspace is checked when the dataset is looked up: `check_workspace`)."""
    allowed = set(roles) | {"admin"}
    if actor.role not in allowed and not (actor.member_roles & allowed):
        raise Forbidden(
            f"role {actor.role!r} may not {what}; needs one of {sorted(allowed)}",
            details={"role": actor.role, "allowed": sorted(allowed)},
        )
    return actor


def require(*roles: str):
    """Dependency factory for `check_role`. The role check is a dependency, so it runs before the
    handler looks anything up: a denied role gets 403 whether or not the id it named exists."""

    def _check(actor: CurrentActor, session: SessionDep) -> Actor:
        session.info[ALLOWED] = frozenset(roles) | {"admin"}
        return check_role(actor, roles)

    _check.roles = frozenset(roles) | {"admin"}  # type: ignore[attr-defined]
    return _check


# Every role grant of the API is one of these (admin is implied in each). docs/security.md is the
# operation x role matrix they make; tests/security/test_roles.py holds every served operation to it.
READERS = ("curator", "reviewer", "auditor", "trainer")
CURATOR = ("curator",)
REVIEWER = ("reviewer",)
# Reviewers and curators judge content: PII verdicts and missed spans, dedup overrules, edits,
# machine suggestions, and the dataset-wide PII and duplicate reports (trainers and auditors work
# from snapshots and lineage; the reports name examples and PII entity counts per dataset).
JUDGES = ("reviewer", "curator")
AUDITOR = ("auditor",)
TRAINER = ("trainer",)
SNAPSHOT_READERS = ("curator", "trainer", "auditor")
RUN_READERS = ("curator", "auditor", "trainer")
ERASURE_READERS = ("curator", "auditor")
# Raw PII: the vault's raw text and provenance identifiers as stored (everyone else reads pseudonyms,
# app/examples/privacy.py). No role beyond admin, who passes every check.
RAW_PII_READERS: tuple[str, ...] = ()

Reader = Annotated[Actor, Depends(require(*READERS))]
Curator = Annotated[Actor, Depends(require(*CURATOR))]
Reviewer = Annotated[Actor, Depends(require(*REVIEWER))]
Judge = Annotated[Actor, Depends(require(*JUDGES))]
Auditor = Annotated[Actor, Depends(require(*AUDITOR))]
Trainer = Annotated[Actor, Depends(require(*TRAINER))]
SnapshotReader = Annotated[Actor, Depends(require(*SNAPSHOT_READERS))]
RunReader = Annotated[Actor, Depends(require(*RUN_READERS))]
ErasureReader = Annotated[Actor, Depends(require(*ERASURE_READERS))]
RawPiiReader = Annotated[Actor, Depends(require(*RAW_PII_READERS))]
Admin = Annotated[Actor, Depends(require())]
