"""People signed in through SSO: their identity and acting key, the workspace roles their groups map to,
the authorization requests in flight and the server-side page sessions (docs/security.md, "Single
sign-on"). Services flush, never commit: the request owns the transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from authlib.common.security import generate_token
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, create_person_key, utcnow
from app.core.config import SsoSettings, get_settings
from app.core.sql import aware
from app.models.auth import ApiKey, Workspace, WorkspaceMember
from app.models.sso import SsoIdentity, SsoLogin, WebSession
from app.sso import oidc
from app.sso.oidc import SignInRefused

# The reason codes a refused sign-in carries (the sign-in page names them; the audit event records them).
REFUSAL_REASONS = frozenset({"state", "provider_error", "provider_unreachable", "provider_misconfigured",
                             "token_exchange", "no_id_token", "bad_signature", "invalid_id_token", "expired",
                             "wrong_audience", "nonce_mismatch", "wrong_issuer", "invalid_claims", "key_revoked"})
LOGIN_TTL_S = 600  # the time a person has at the provider's login page before the request expires
_PAGE_REVIEW_ROLES = ("reviewer",)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def csrf_token(token: str) -> str:
    """The session's CSRF token: derived from the session token with the service secret, so it needs no
    column and a page that shows it reveals nothing about the cookie."""
    return hmac.new(get_settings().secret_key.encode(), b"pedigree/sso-csrf/v1\0" + token.encode(),
                    hashlib.sha256).hexdigest()


# --- the authorization request -----------------------------------------------------------------------------

def start(session: Session, cfg: SsoSettings, *, next_path: str = "/review") -> tuple[str, str]:
    """A new authorization request: (state, the provider URL to send the browser to). The state, nonce and
    PKCE verifier stay here; the browser carries only the state (in the URL and in a cookie)."""
    now = utcnow()
    session.execute(delete(SsoLogin).where(SsoLogin.expires_at < now))  # abandoned logins: nothing else cleans them
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), generate_token(64)
    url = oidc.authorization_url(cfg, state=state, nonce=nonce, code_verifier=verifier)
    session.add(SsoLogin(state=state, nonce=nonce, code_verifier=verifier, next_path=next_path,
                         expires_at=now + dt.timedelta(seconds=LOGIN_TTL_S)))
    session.flush()
    return state, url


def take_login(session: Session, state: str) -> SsoLogin:
    """The request `state` names, deleted as it is read: a state works once. A callback replayed (or
    raced by a second tab) finds nothing; on PostgreSQL the second DELETE waits for the first and then
    deletes no row."""
    row = session.get(SsoLogin, state)
    if row is None:
        raise SignInRefused("state", "this sign-in was already used or never started here; sign in again")
    n = session.execute(delete(SsoLogin).where(SsoLogin.state == state)).rowcount
    if n != 1:
        raise SignInRefused("state", "this sign-in was already used; sign in again")
    if aware(row.expires_at) <= utcnow():
        raise SignInRefused("state", "this sign-in took too long; sign in again")
    return row


# --- groups -> roles ---------------------------------------------------------------------------------------

@dataclass
class Mapping:
    admin: bool
    roles: list[tuple[Workspace, str]]  # one role per workspace
    unmapped_groups: list[str]
    unknown_workspaces: list[str]


def groups_of(cfg: SsoSettings, claims: dict[str, Any]) -> list[str]:
    raw = claims.get(cfg.groups_claim)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    return [g for g in raw if isinstance(g, str)][:500]


def map_groups(session: Session, cfg: SsoSettings, groups: list[str]) -> Mapping:
    table = cfg.group_role_table()
    held = set(groups)
    hits = [(g, ws, role) for g, ws, role in table if g in held]
    names = sorted({ws for _, ws, _ in hits if ws != "*"})
    found = {w.name: w for w in session.scalars(select(Workspace).where(Workspace.name.in_(names)))} if names else {}
    roles: dict[str, tuple[Workspace, str]] = {}
    for _, ws, role in hits:  # the table's order: the first entry for a workspace wins
        if ws != "*" and ws in found and ws not in roles:
            roles[ws] = (found[ws], role)
    mapped = {g for g, ws, _ in hits if ws == "*" or ws in found}
    return Mapping(admin=any(ws == "*" for _, ws, _ in hits), roles=list(roles.values()),
                   unmapped_groups=sorted(held - mapped), unknown_workspaces=sorted(set(names) - set(found)))


def _key_role(m: Mapping) -> str:
    """The acting key's own role. Scoped keys are checked by their workspace roles; this one only shows on
    /v1/keys and decides which pages apply (reviewer when the person reviews anywhere)."""
    if m.admin:
        return "admin"
    mine = [r for _, r in m.roles]
    if "reviewer" in mine:
        return "reviewer"
    return mine[0] if mine else "reviewer"


# --- sign-in, the session, sign-out ------------------------------------------------------------------------

@dataclass
class SignedIn:
    token: str
    identity: SsoIdentity
    mapping: Mapping


def display_name(cfg: SsoSettings, claims: dict[str, Any]) -> str:
    for claim in (cfg.name_claim, "email", "preferred_username", "name"):
        v = claims.get(claim)
        if isinstance(v, str) and v.strip():
            return v.strip()[:150]
    return str(claims["sub"])[:150]


def _identity(session: Session, issuer: str, subject: str) -> SsoIdentity | None:
    return session.scalar(select(SsoIdentity).where(SsoIdentity.issuer == issuer, SsoIdentity.subject == subject))


def _new_identity(session: Session, issuer: str, subject: str, name: str, role: str) -> SsoIdentity:
    """A person's first sign-in: their identity and acting key. In a savepoint, because their first
    sign-in in two tabs at once races: the loser's insert fails on (issuer, subject) and it takes the
    winner's identity (on PostgreSQL the insert waits for the winner's commit, then sees it)."""
    try:
        with session.begin_nested():
            key = create_person_key(session, name=f"{name} (sso)", role=role)
            ident = SsoIdentity(issuer=issuer, subject=subject, key_id=key.id, display_name=name)
            session.add(ident)
            session.flush()
        return ident
    except IntegrityError:
        ident = _identity(session, issuer, subject)
        if ident is None:
            raise
        return ident


def sign_in(session: Session, cfg: SsoSettings, claims: dict[str, Any], *, groups_source: str = "id_token",
            id_token: str | None = None) -> SignedIn:
    """Signs the person the checked claims name in: finds or makes their identity and acting key, rewrites
    the key's memberships from their groups, opens a session (keeping the raw `id_token` as the hint of
    its provider-side sign-out). Audited `sso.signed_in`."""
    now = utcnow()
    issuer, subject = str(claims["iss"]), str(claims["sub"])
    groups = groups_of(cfg, claims)
    m = map_groups(session, cfg, groups)
    name = display_name(cfg, claims)
    ident = _identity(session, issuer, subject) or _new_identity(session, issuer, subject, name, _key_role(m))
    key = session.get(ApiKey, ident.key_id)
    if key is None or key.revoked_at is not None:
        raise SignInRefused("key_revoked", "an administrator revoked this person's access")
    key.role = _key_role(m)
    key.name = f"{name} (sso)"
    ident.display_name, ident.groups = name, groups
    ident.last_sign_in_at = now
    # The groups are the source of truth for a person: their memberships are the groups' roles, now.
    session.execute(delete(WorkspaceMember).where(WorkspaceMember.key_id == key.id))
    if not m.admin:
        for ws, role in m.roles:
            session.add(WorkspaceMember(workspace_id=ws.id, key_id=key.id, role=role, created_by="sso"))
    token = secrets.token_urlsafe(32)
    ws_row = WebSession(token_sha256=_sha256(token), identity_id=ident.id, key_id=key.id,
                        expires_at=now + dt.timedelta(seconds=cfg.session_ttl_s), id_token=id_token)
    session.add(ws_row)
    session.flush()
    actor = Actor(key_id=key.id, name=key.name, role=key.role)
    audit.record(session, actor=actor.ref, action="sso.signed_in", entity_type="sso_identity", entity_id=ident.id,
                 payload={"sso": {"iss": issuer, "sub": subject}, "key_id": str(key.id), "session_id": str(ws_row.id),
                          "groups": groups, "groups_source": groups_source, "admin": m.admin,
                          "roles": [{"workspace": ws.name, "workspace_id": str(ws.id), "role": r} for ws, r in m.roles],
                          "unmapped_groups": m.unmapped_groups, "unknown_workspaces": m.unknown_workspaces})
    return SignedIn(token=token, identity=ident, mapping=m)


def record_refusal(session: Session, cfg: SsoSettings, refused: SignInRefused, *, client: str | None) -> None:
    audit.record(session, actor="anonymous", action="sso.sign_in_refused", entity_type="sso_identity",
                 payload={"issuer": cfg.issuer, "reason": refused.reason, "message": refused.message[:300],
                          "client": client})


@dataclass
class PageSession:
    actor: Actor
    session_id: uuid.UUID
    issuer: str
    subject: str
    csrf: str


_W, _K, _I = WebSession.__table__, ApiKey.__table__, SsoIdentity.__table__
_BY_TOKEN = (select(_W.c.id, _W.c.expires_at, _W.c.revoked_at, _K.c.id.label("key_id"), _K.c.name, _K.c.role,
                    _K.c.revoked_at.label("key_revoked_at"), _K.c.expires_at.label("key_expires_at"),
                    _I.c.issuer, _I.c.subject)
             .select_from(_W.join(_K, _K.c.id == _W.c.key_id).join(_I, _I.c.id == _W.c.identity_id)))


def page_session(session: Session, token: str | None) -> PageSession | None:
    """The live session a cookie names (one indexed query), or None: unknown, expired, signed out, or its
    person's key revoked. Read on every request, so sign-out and revocation act on the next one."""
    if not token or len(token) > 100:
        return None
    r = session.connection().execute(_BY_TOKEN.where(_W.c.token_sha256 == _sha256(token))).first()
    now = utcnow()
    if r is None or r.revoked_at is not None or aware(r.expires_at) <= now or r.key_revoked_at is not None:
        return None
    if r.key_expires_at is not None and aware(r.key_expires_at) <= now:
        return None
    return PageSession(actor=Actor(key_id=r.key_id, name=r.name, role=r.role, is_human=True), session_id=r.id,
                       issuer=r.issuer, subject=r.subject, csrf=csrf_token(token))


@dataclass
class SignedOut:
    # Where to send the browser to end the provider's session too; None: only ours ended.
    provider_url: str | None
    # "requested" (sent to the end_session_endpoint), "unsupported" (the provider names none) or
    # "unreachable" (its discovery document could not be read): what the signed-out page tells the person.
    provider: str


def sign_out(session: Session, cfg: SsoSettings, token: str, *, state: str) -> SignedOut | None:
    """Ends the session server-side (the cookie, and any copy of it, is refused from now on) and, when the
    provider supports RP-initiated logout, says where to end the person's session there too. None: the
    cookie names no live session."""
    ps = page_session(session, token)
    if ps is None:
        return None
    id_token = session.scalar(select(WebSession.id_token).where(WebSession.id == ps.session_id))
    # The ID token goes with the session: it is needed once, for this hint, and names the person.
    session.execute(update(WebSession).where(WebSession.id == ps.session_id).values(revoked_at=utcnow(), id_token=None))
    # Sessions long past their end are useless rows; sign-outs are frequent enough to keep the table small.
    session.execute(delete(WebSession).where(WebSession.expires_at < utcnow() - dt.timedelta(days=1)))
    try:
        url = oidc.end_session_url(cfg, id_token=id_token, state=state)
        out = SignedOut(url, "requested" if url else "unsupported")
    except SignInRefused:  # the provider is down: our session is over all the same, and the page says the rest
        out = SignedOut(None, "unreachable")
    audit.record(session, actor=ps.actor.ref, action="sso.signed_out", entity_type="sso_identity",
                 payload={"sso": {"iss": ps.issuer, "sub": ps.subject}, "session_id": str(ps.session_id),
                          "provider_sign_out": out.provider})
    return out


def may_review(actor: Actor) -> bool:
    """The review page is for people who review somewhere (or admins); others are told they have no access."""
    return actor.role == "admin" or any(r in _PAGE_REVIEW_ROLES for _, r in actor.memberships)


def identity_groups(session: Session, key_id: uuid.UUID) -> list[str]:
    return list(session.scalar(select(SsoIdentity.groups).where(SsoIdentity.key_id == key_id)) or [])


def workspace_name(session: Session, workspace_id: uuid.UUID) -> str:
    return session.scalar(select(Workspace.name).where(Workspace.id == workspace_id)) or str(workspace_id)
