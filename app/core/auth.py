"""API keys and roles.

A key looks like `pdg_<prefix>_<secret>`: the prefix finds the row, the sha256 of the whole key is
compared in constant time. Keys are shown once, at creation, and never stored in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.core.db import SessionDep
from app.core.errors import Forbidden, Unauthorized, ValidationFailed
from app.core.sql import any_of
from app.models.auth import ROLES, ApiKey

KEY_PREFIX = "pdg"


@dataclass(frozen=True)
class Actor:
    key_id: uuid.UUID
    name: str
    role: str
    is_human: bool = True

    @property
    def ref(self) -> str:
        """Stable identity used in provenance, reviews and audit events (names need not be unique)."""
        return f"{self.name}#{str(self.key_id)[-8:]}"


SYSTEM = Actor(key_id=uuid.UUID(int=0), name="system", role="admin", is_human=False)


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str, role: str, created_by: str | None = None,
               is_human: bool = True) -> tuple[ApiKey, str]:
    if role not in ROLES:
        raise ValidationFailed(
            f"unknown role {role!r}", details=[{"field": "role", "code": "invalid",
                                                "message": f"one of {', '.join(ROLES)}"}]
        )
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, role=role, prefix=prefix, key_sha256=_sha256(key), created_by=created_by,
                 is_human=is_human)
    session.add(row)
    session.flush()
    return row, key


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
    return Actor(key_id=row.id, name=row.name, role=row.role, is_human=row.is_human)


# Table columns and statements built once: every request authenticates, and an ORM entity load
# (identity map, instance state) or a statement built per call cost several times the query itself.
_K = ApiKey.__table__
KEY_COLUMNS = (_K.c.id, _K.c.name, _K.c.role, _K.c.is_human, _K.c.key_sha256, _K.c.revoked_at, _K.c.prefix)
_BY_PREFIX = select(*KEY_COLUMNS).where(_K.c.prefix == bindparam("prefix"))
_BY_PREFIXES = {pg: select(*KEY_COLUMNS).where(any_of(_K.c.prefix, name="prefixes", pg=pg)) for pg in (False, True)}


def authenticate(session: Session, key: str) -> Actor:
    prefix = key_prefix(key)
    return check_key(session.connection().execute(_BY_PREFIX, {"prefix": prefix}).first(), key)


def authenticate_many(session: Session, keys: set[str]) -> dict[str, Actor | Unauthorized]:
    """`authenticate` for a batch of keys in one query (the review committer's batches carry the
    keys of many reviewers; a query each was up to half of a batch's round trips)."""
    out: dict[str, Actor | Unauthorized] = {}
    prefixes: dict[str, str] = {}
    for key in keys:
        try:
            prefixes[key] = key_prefix(key)
        except Unauthorized as e:
            out[key] = e
    rows = {}
    if prefixes:
        conn = session.connection()
        stmt = _BY_PREFIXES[conn.dialect.name == "postgresql"]
        rows = {r.prefix: r for r in conn.execute(stmt, {"prefixes": sorted(set(prefixes.values()))})}
    for key, prefix in prefixes.items():
        try:
            out[key] = check_key(rows.get(prefix), key)
        except Unauthorized as e:
            out[key] = e
    return out


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


def current_actor(request: Request, session: SessionDep) -> Actor:
    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    actor = authenticate(session, token)
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def check_role(actor: Actor, roles: tuple[str, ...], what: str = "do this") -> Actor:
    """Admin passes every check; everyone else needs one of `roles`."""
    allowed = set(roles) | {"admin"}
    if actor.role not in allowed:
        raise Forbidden(
            f"role {actor.role!r} may not {what}; needs one of {sorted(allowed)}",
            details={"role": actor.role, "allowed": sorted(allowed)},
        )
    return actor


def require(*roles: str):
    """Dependency factory for `check_role`. The role check is a dependency, so it runs before the
    handler looks anything up: a denied role gets 403 whether or not the id it named exists."""

    def _check(actor: CurrentActor) -> Actor:
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
