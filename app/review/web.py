"""The reviewer page at /review: server-rendered HTML, one small script, no framework.

Sign-in takes an API key and keeps it in an HttpOnly, SameSite=Strict cookie, encrypted with a key
derived from the service secret (AES-GCM), so the key is neither readable by scripts nor by anyone
who only sees the cookie. Or, when configured, single sign-on (app/sso): an OpenID Connect sign-in whose
session lives server-side, the cookie holding only a random token. The page's JSON calls live under
/review/api and accept only such a cookie plus an X-CSRF-Token header matching the session's token; the /v1 API never reads cookies,
so it needs no CSRF defence. Example text is untrusted: the script only ever sets textContent, and
a strict Content-Security-Policy forbids inline scripts should a template ever slip.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.core.auth import PERSON, Actor, authenticate, install_scope, with_memberships
from app.core.config import get_settings
from app.core.db import SessionDep
from app.core.errors import Forbidden, PedigreeError, Unauthorized
from app.datasets import service as datasets
from app.examples import service as examples
from app.review import decisions, edits, pairwise, queue, service, stats
from app.review.schemas import PAIRWISE_REASON_CODES, PairwiseIn, ReviewIn, RevisionIn
from app.sso import service as sso
from app.sso.oidc import SignInRefused

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
STATIC = {"review.js": "text/javascript", "review.css": "text/css"}

COOKIE = "pedigree_review"
PRE_COOKIE = "pedigree_review_pre"
# Single sign-on (docs/security.md): the server-side session's token, and the state of a sign-in in flight.
# SameSite=Lax, not Strict: the provider sends the browser back to the callback by a cross-site redirect,
# and a Strict cookie set there would not come with the redirect on to /review.
SSO_COOKIE = "pedigree_sso"
SSO_STATE_COOKIE = "pedigree_sso_state"
# The state of a provider-side sign-out in flight (RP-initiated logout): the signed-out page says the
# provider's session ended only when the browser comes back with the state this browser was given.
SSO_LOGOUT_COOKIE = "pedigree_sso_logout"
LOGOUT_TTL_S = 600
SESSION_TTL_S = 12 * 3600
PAGE_ROLES = ("reviewer", "admin")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

router = APIRouter(prefix="/review", include_in_schema=False)


# --- the sealed session cookie -----------------------------------------------------------------------------

def _aead() -> AESGCM:
    secret = get_settings().secret_key.encode()
    return AESGCM(hashlib.sha256(b"pedigree/review-session/v1\0" + secret).digest())


def seal(data: dict[str, Any]) -> str:
    nonce = secrets.token_bytes(12)
    blob = nonce + _aead().encrypt(nonce, orjson.dumps(data), COOKIE.encode())
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def unseal(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        blob = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        data = orjson.loads(_aead().decrypt(blob[:12], blob[12:], COOKIE.encode()))
    except (ValueError, InvalidTag, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict) or time.time() - data.get("iat", 0) > SESSION_TTL_S:
        return None
    return data


def _live(session: Session, data: dict[str, Any] | None) -> bool:
    """A cookie that unseals and was not signed out. Cookies sealed before sessions had ids carry no
    "s" and cannot be revoked, so they are refused too (their holders sign in again once)."""
    if data is None or not isinstance(data.get("s"), str):
        return False
    return not service.page_session_revoked(session, data["s"])


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _same_origin(request: Request) -> bool:
    """Browsers send Origin on POSTs; when present it must be this server (a second line behind
    SameSite=Strict and the CSRF token)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _headers(resp: Response, *, form_targets: str = "") -> Response:
    resp.headers["Content-Security-Policy"] = CSP if not form_targets else CSP.replace(
        "form-action 'self'", f"form-action 'self' {form_targets}")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: under no-referrer browsers send "Origin: null" on form posts.
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Cache-Control"] = "no-store"
    return resp


class PageUser:
    def __init__(self, actor: Actor, csrf: str) -> None:
        self.actor = actor
        self.csrf = csrf


def _sso_user(request: Request, session: Session) -> PageUser | None:
    """The person of the SSO session cookie, scoped like any key (their groups' workspace roles), with
    their (issuer, subject) put on the request so its audit events name them. None: no SSO cookie."""
    token = request.cookies.get(SSO_COOKIE)
    if token is None:
        return None
    ps = sso.page_session(session, token)
    if ps is None:
        raise Unauthorized("signed out; sign in at /review", code="signed_out")
    actor = with_memberships(session, ps.actor)
    install_scope(session, actor, PAGE_ROLES)
    session.info[PERSON] = {"iss": ps.issuer, "sub": ps.subject}
    if not sso.may_review(actor):
        raise Forbidden("your groups give you no reviewer role in any workspace", code="no_access")
    return PageUser(actor, ps.csrf)


def _page_user(request: Request, session: SessionDep) -> PageUser:
    user = _sso_user(request, session)
    if user is not None:
        return user
    data = unseal(request.cookies.get(COOKIE))
    if not _live(session, data):
        raise Unauthorized("signed out; sign in at /review", code="signed_out")
    # Authenticated on every call: a revoked key stops working at once, cookie or not. Scoped like the
    # API: the page shows and decides only in the workspaces where the key reviews.
    actor = with_memberships(session, authenticate(session, data["k"]))
    install_scope(session, actor, PAGE_ROLES)
    if actor.role not in PAGE_ROLES:
        raise Forbidden("the review page is for reviewer keys")
    return PageUser(actor, data["c"])


def _csrf_user(request: Request, user: Annotated[PageUser, Depends(_page_user)]) -> PageUser:
    token = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(token, user.csrf) or not _same_origin(request):
        raise Forbidden("missing or wrong CSRF token; reload the page", code="csrf")
    return user


Viewer = Annotated[PageUser, Depends(_page_user)]
Writer = Annotated[PageUser, Depends(_csrf_user)]


# --- pages -------------------------------------------------------------------------------------------------

# What the signed-out page may be told by its query string. "provider" (the provider's session ended too)
# is never among them: only the provider's redirect back with this browser's state shows it.
SIGNED_OUT_QUERY = ("1", "unsupported", "unreachable")


def _sign_in_page(request: Request, *, signed_out: str | None = None) -> Response:
    pre = secrets.token_urlsafe(24)
    cfg = get_settings().sso
    q = request.query_params
    reason = q.get("reason") or ""
    if signed_out is None and q.get("signed_out") in SIGNED_OUT_QUERY:
        signed_out = q.get("signed_out")
    resp = templates.TemplateResponse(request, "signin.html", {
        "pre": pre, "error": q.get("error"), "reason": reason if reason in sso.REFUSAL_REASONS else None,
        "signed_out": signed_out,
        "sso": cfg.enabled, "sso_label": cfg.label})
    resp.set_cookie(PRE_COOKIE, pre, max_age=600, httponly=True, samesite="strict", secure=_secure(request),
                    path="/review")
    # The SSO button posts to /review/sso/start, which redirects to the provider: CSP's form-action
    # governs that redirect too, so the provider's origin is named (on this page only).
    return _headers(resp, form_targets=_provider_origins("authorization_endpoint") if cfg.enabled else "")


def _provider_origins(endpoint: str) -> str:
    """The origin of one of the provider's endpoints, for CSP's form-action: a form whose answer redirects
    there (the SSO button to the authorization endpoint, sign-out to the end_session_endpoint) is held
    to form-action along the whole redirect chain."""
    cfg = get_settings().sso
    try:
        url = sso.oidc.metadata(cfg).get(endpoint)
    except SignInRefused:  # the provider is down: the button will be refused with a reason anyway
        url = cfg.issuer or ""
    if not isinstance(url, str):
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


def _page_for(request: Request, session: Session, actor: Actor, csrf: str, dataset: str | None,
              via_sso: bool) -> Response:
    rows = []
    # Only where the person reviews: a workspace where they curate or audit would list datasets whose
    # queue answers 403 (the page's API is scoped to PAGE_ROLES, like /v1/review).
    for ds in datasets.list_all(session, roles=PAGE_ROLES):
        c = datasets.counts(session, ds.id)
        rows.append({"id": str(ds.id), "name": ds.name, "format": ds.format, "pending": c.get("pending_review", 0)})
    selected = dataset or (max(rows, key=lambda r: r["pending"])["id"] if rows else None)
    resp = templates.TemplateResponse(request, "review.html", {
        "actor": actor, "csrf": csrf, "datasets": rows, "selected": selected, "via_sso": via_sso})
    return _headers(resp, form_targets=_provider_origins("end_session_endpoint") if via_sso else "")


@router.get("", response_class=HTMLResponse)
def page(request: Request, session: SessionDep, dataset: str | None = None) -> Response:
    token = request.cookies.get(SSO_COOKIE)
    if token is not None:
        ps = sso.page_session(session, token)
        if ps is None:  # signed out, expired or revoked: the cookie is worth nothing, drop it
            resp = _sign_in_page(request)
            resp.delete_cookie(SSO_COOKIE, path="/review")
            return resp
        actor = with_memberships(session, ps.actor)
        install_scope(session, actor, PAGE_ROLES)
        if not sso.may_review(actor):
            groups = sso.identity_groups(session, actor.key_id)
            return _headers(templates.TemplateResponse(request, "noaccess.html", {
                "actor": actor, "csrf": ps.csrf, "groups": groups,
                "roles": [{"workspace": sso.workspace_name(session, w), "role": r} for w, r in actor.memberships]}),
                form_targets=_provider_origins("end_session_endpoint"))
        return _page_for(request, session, actor, ps.csrf, dataset, via_sso=True)
    data = unseal(request.cookies.get(COOKIE))
    actor = None
    if _live(session, data):
        try:
            actor = with_memberships(session, authenticate(session, data["k"]))
            install_scope(session, actor, PAGE_ROLES)
        except PedigreeError:
            actor = None
    if actor is None or actor.role not in PAGE_ROLES:
        return _sign_in_page(request)
    return _page_for(request, session, actor, data["c"], dataset, via_sso=False)


@router.post("/session")
def sign_in(request: Request, session: SessionDep, api_key: Annotated[str, Form(max_length=200)],
            pre: Annotated[str, Form(max_length=100)] = "") -> Response:
    # Login CSRF: the form must carry the value of a cookie only this origin could have set.
    if not pre or not hmac.compare_digest(pre, request.cookies.get(PRE_COOKIE, "")) or not _same_origin(request):
        return _headers(RedirectResponse("/review?error=expired", status_code=303))
    try:
        actor = authenticate(session, api_key.strip())
    except PedigreeError:
        request.state.auth_failed = True  # a redirect, not a 401: the throttle counts it from this flag
        return _headers(RedirectResponse("/review?error=invalid", status_code=303))
    if actor.role not in PAGE_ROLES or not actor.is_human:
        return _headers(RedirectResponse("/review?error=role", status_code=303))
    resp = RedirectResponse("/review", status_code=303)
    resp.set_cookie(COOKIE, seal({"k": api_key.strip(), "c": secrets.token_urlsafe(32), "s": secrets.token_urlsafe(24),
                                  "iat": int(time.time())}),
                    max_age=SESSION_TTL_S, httponly=True, samesite="strict", secure=_secure(request), path="/review")
    resp.delete_cookie(PRE_COOKIE, path="/review")
    resp.delete_cookie(SSO_COOKIE, path="/review")
    return _headers(resp)


@router.post("/session/delete")
def sign_out(request: Request, session: SessionDep, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    token = request.cookies.get(SSO_COOKIE)
    if token is not None:
        ps = sso.page_session(session, token)
        if ps is not None and not hmac.compare_digest(csrf, ps.csrf):
            # Without the page's token a cross-site form could sign people out; refuse, keep the session.
            return _headers(RedirectResponse("/review", status_code=303))
        state = secrets.token_urlsafe(32)
        out = sso.sign_out(session, get_settings().sso, token, state=state)
        if out is not None and out.provider_url:
            # On to the provider, which ends its own session and sends the browser back to
            # /review/sso/signed-out with this state.
            resp = RedirectResponse(out.provider_url, status_code=303)
            resp.set_cookie(SSO_LOGOUT_COOKIE, state, max_age=LOGOUT_TTL_S, httponly=True, samesite="lax",
                            secure=_secure(request), path="/review/sso")
        else:
            resp = RedirectResponse(f"/review?signed_out={out.provider if out else 1}", status_code=303)
        resp.delete_cookie(SSO_COOKIE, path="/review")
        return _headers(resp)
    data = unseal(request.cookies.get(COOKIE))
    resp = RedirectResponse("/review", status_code=303)
    if data is not None and hmac.compare_digest(csrf, data["c"]):
        if isinstance(data.get("s"), str):
            service.revoke_page_session(session, session_id=data["s"], expires_at=dt.datetime.fromtimestamp(
                data.get("iat", 0) + SESSION_TTL_S, dt.UTC))  # a copy of the cookie (another browser, a proxy log) dies with this one
        resp.delete_cookie(COOKIE, path="/review")
    return _headers(resp)


# --- single sign-on (OpenID Connect, authorization code + PKCE) -----------------------------------------

def _refuse(request: Request, session: Session, refused: SignInRefused) -> Response:
    """A refused sign-in: audited (in this request's transaction, which commits: the answer is a redirect,
    not an error), counted by the failed-authentication throttle, and told on the sign-in page."""
    sso.record_refusal(session, get_settings().sso, refused, client=request.client.host if request.client else None)
    request.state.auth_failed = True
    resp = RedirectResponse(f"/review?error=sso&reason={refused.reason}", status_code=303)
    resp.delete_cookie(SSO_STATE_COOKIE, path="/review/sso")
    return _headers(resp)


@router.post("/sso/start")
def sso_start(request: Request, session: SessionDep, pre: Annotated[str, Form(max_length=100)] = "") -> Response:
    cfg = get_settings().sso
    if not cfg.enabled:
        return Response(status_code=404)
    # Login CSRF, as for the key form: only a page of this origin holds the pre-sign-in cookie's value.
    if not pre or not hmac.compare_digest(pre, request.cookies.get(PRE_COOKIE, "")) or not _same_origin(request):
        return _headers(RedirectResponse("/review?error=expired", status_code=303))
    try:
        state, url = sso.start(session, cfg)
    except SignInRefused as e:
        return _refuse(request, session, e)
    resp = RedirectResponse(url, status_code=303)
    # Binds the flow to this browser: a callback carrying a state this browser did not start is refused,
    # so nobody can sign a victim in as themselves with their own code.
    resp.set_cookie(SSO_STATE_COOKIE, state, max_age=sso.LOGIN_TTL_S, httponly=True, samesite="lax",
                    secure=_secure(request), path="/review/sso")
    resp.delete_cookie(PRE_COOKIE, path="/review")
    return _headers(resp)


@router.get("/sso/callback")
def sso_callback(request: Request, session: SessionDep, state: str = "", code: str = "", error: str = "") -> Response:
    cfg = get_settings().sso
    if not cfg.enabled:
        return Response(status_code=404)
    try:
        mine = request.cookies.get(SSO_STATE_COOKIE, "")
        if not state or not mine or not hmac.compare_digest(state.encode(), mine.encode()):
            raise SignInRefused("state", "this sign-in was not started in this browser; sign in again")
        login = sso.take_login(session, state)
        if error:
            raise SignInRefused("provider_error", f"the identity provider answered {error[:100]!r}")
        if not code:
            raise SignInRefused("provider_error", "the identity provider sent no code")
        token = sso.oidc.exchange_code(cfg, code=code, code_verifier=login.code_verifier)
        checked = sso.oidc.validate_id_token(cfg, token, nonce=login.nonce)
        claims = sso.oidc.with_userinfo_groups(cfg, token, checked)
        source = "id_token" if cfg.groups_claim in checked else "userinfo" if cfg.groups_claim in claims else "none"
        signed = sso.sign_in(session, cfg, claims, groups_source=source, id_token=token["id_token"])
    except SignInRefused as e:
        return _refuse(request, session, e)
    resp = RedirectResponse(login.next_path if login.next_path.startswith("/review") else "/review", status_code=303)
    resp.set_cookie(SSO_COOKIE, signed.token, max_age=int(cfg.session_ttl_s), httponly=True, samesite="lax",
                    secure=_secure(request), path="/review")
    resp.delete_cookie(SSO_STATE_COOKIE, path="/review/sso")
    resp.delete_cookie(COOKIE, path="/review")
    return _headers(resp)


@router.get("/sso/signed-out", response_class=HTMLResponse)
def sso_signed_out(request: Request, state: str = "") -> Response:
    """The provider's redirect after it ended its session (the post_logout_redirect_uri). Our session ended
    before the browser left; this page only tells the person, and says the provider's session is over
    only when the state is the one this browser was given at sign-out (else it is a link anyone could send)."""
    mine = request.cookies.get(SSO_LOGOUT_COOKIE, "")
    ours = bool(state) and bool(mine) and hmac.compare_digest(state.encode(), mine.encode())
    resp = _sign_in_page(request, signed_out="provider" if ours else "1")
    resp.delete_cookie(SSO_LOGOUT_COOKIE, path="/review/sso")
    return resp


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    resp = FileResponse(HERE / "static" / name, media_type=STATIC[name])
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


# --- the page's JSON calls ---------------------------------------------------------------------------------

def _skip_list(skip: str | None) -> list[str]:
    out = []
    for part in (skip or "").split(",")[:200]:
        part = part.strip()
        if len(part) == 36:
            out.append(part)
    return out


@router.get("/api/next")
def api_next(session: SessionDep, user: Viewer, dataset: str, skip: str | None = None) -> dict[str, Any]:
    ds = datasets.get(session, dataset)
    items = queue.next_items(session, dataset=ds, actor=user.actor, limit=1, exclude=_skip_list(skip),
                             with_view=True)
    return {"item": items[0] if items else None,
            "progress": stats.progress(session, dataset=ds, actor=user.actor)}


@router.get("/api/examples/{example_id}")
def api_example(example_id: str, session: SessionDep, user: Viewer) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    ds = datasets.get(session, ex.dataset_id)
    view = examples.view(session, ex, user.actor)
    item = {"example_id": str(ex.id), "revision_id": str(ex.current_revision_id), "dataset_id": str(ex.dataset_id),
            "lease_expires_at": None, "example": view}
    content = (view.get("revision") or {}).get("content")
    if ds.format == "preference" and content:
        item["pairwise"] = {**pairwise.blind_view(content, user.actor.key_id, ex.id),
                            "reason_codes": list(PAIRWISE_REASON_CODES)}
    return {"item": item,
            "progress": stats.progress(session, dataset=ds, actor=user.actor)}


@router.post("/api/examples/{example_id}/decision")
def api_decide(example_id: str, data: ReviewIn, session: SessionDep, user: Writer) -> dict[str, Any]:
    return decisions.decide(session, example_id=example_id, actor=user.actor, data=data)


@router.post("/api/examples/{example_id}/comparison")
def api_compare(example_id: str, data: PairwiseIn, session: SessionDep, user: Writer) -> dict[str, Any]:
    return pairwise.compare(session, example_id=example_id, actor=user.actor, data=data)


@router.post("/api/examples/{example_id}/revision")
def api_edit(example_id: str, data: RevisionIn, session: SessionDep, user: Writer) -> dict[str, Any]:
    return edits.edit(session, example_id=example_id, actor=user.actor, data=data)


@router.post("/api/examples/{example_id}/release")
def api_release(example_id: str, session: SessionDep, user: Writer) -> dict[str, Any]:
    return queue.release_lease(session, example_id=example_id, actor=user.actor)


@router.post("/api/examples/{example_id}/renew")
def api_renew(example_id: str, session: SessionDep, user: Writer) -> dict[str, Any]:
    return queue.renew_lease(session, example_id=example_id, actor=user.actor)
