"""The OpenID Connect relying party: discovery, the authorization request, the code exchange and the ID
token's checks. authlib builds the requests (PKCE S256, client authentication) and validates the ID
token's claims (`CodeIDToken`: iss, aud, exp, iat, nonce, azp, at_hash); joserfc (authlib's JOSE layer)
verifies the signature against the provider's published keys. Anything wrong is `SignInRefused` with a
reason code the sign-in page and the audit log show; nothing here trusts a claim it did not check.
Sign-out at the provider (RP-Initiated Logout 1.0) is the `end_session_endpoint` URL built here.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.common.urls import add_params_to_uri
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from app.core.config import SsoSettings

# Signature algorithms an ID token may use: public-key ones only. "none" is never accepted, and HS*
# (keyed with the client secret) is refused so that a leaked client secret cannot mint ID tokens.
ACCEPTED_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
METADATA_TTL_S = 3600.0
HTTP_TIMEOUT_S = 10.0


class SignInRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_lock = threading.Lock()
_metadata: dict[str, tuple[float, dict[str, Any]]] = {}
_jwks: dict[str, dict[str, Any]] = {}


def _get_json(url: str, what: str) -> Any:
    """A provider document (discovery, keys) fetched and parsed; any failure is the provider's."""
    try:
        r = httpx.get(url, timeout=HTTP_TIMEOUT_S)
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise SignInRefused("provider_unreachable", f"the identity provider's {what} failed: {type(e).__name__}") from None


def metadata(cfg: SsoSettings) -> dict[str, Any]:
    """The provider's discovery document, cached for an hour per issuer."""
    issuer = cfg.issuer or ""
    hit = _metadata.get(issuer)
    if hit is not None and time.monotonic() - hit[0] < METADATA_TTL_S:
        return hit[1]
    doc = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
    if not isinstance(doc, dict):
        raise SignInRefused("provider_misconfigured", "the discovery document is not a JSON object")
    # OpenID Connect Discovery 1.0, 4.3: the document's issuer must be the one asked for, exactly, or a
    # provider (or whoever answers at that URL) could pass tokens off as another issuer's.
    if doc.get("issuer") != issuer:
        raise SignInRefused("provider_misconfigured", "the discovery document names another issuer")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(doc.get(name), str):
            raise SignInRefused("provider_misconfigured", f"the discovery document has no {name}")
    with _lock:
        _metadata[issuer] = (time.monotonic(), doc)
    return doc


def _key_set(cfg: SsoSettings, *, force: bool = False) -> KeySet:
    uri = metadata(cfg)["jwks_uri"]
    keys = None if force else _jwks.get(uri)
    if keys is None:
        keys = _get_json(uri, "keys")
        with _lock:
            _jwks[uri] = keys
    return KeySet.import_key_set(keys)


def forget() -> None:
    """Drops the cached discovery documents and keys (tests start providers with new keys)."""
    with _lock:
        _metadata.clear()
        _jwks.clear()


def _client(cfg: SsoSettings) -> OAuth2Client:
    return OAuth2Client(client_id=cfg.client_id, client_secret=cfg.client_secret, scope=cfg.scopes,
                        redirect_uri=cfg.redirect_url, code_challenge_method="S256",
                        token_endpoint_auth_method="client_secret_basic", timeout=HTTP_TIMEOUT_S)


def authorization_url(cfg: SsoSettings, *, state: str, nonce: str, code_verifier: str) -> str:
    doc = metadata(cfg)
    with _client(cfg) as c:
        url, _ = c.create_authorization_url(doc["authorization_endpoint"], state=state, nonce=nonce,
                                            code_verifier=code_verifier)
    return url


def end_session_url(cfg: SsoSettings, *, id_token: str | None, state: str) -> str | None:
    """Where to send the browser to end the person's session at the provider too (OpenID Connect
    RP-Initiated Logout 1.0), or None when the provider's discovery document names no
    `end_session_endpoint` (then only our session ends). `id_token_hint` tells the provider whose session
    and which client; the `post_logout_redirect_uri` must be registered with it, and `state` comes back
    with the browser so the signed-out page can tell that redirect from a link anyone could send."""
    endpoint = metadata(cfg).get("end_session_endpoint")
    if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
        return None
    params = {"post_logout_redirect_uri": cfg.post_logout_url, "state": state, "client_id": cfg.client_id or ""}
    if id_token:
        params["id_token_hint"] = id_token
    # The endpoint may carry a query of its own (some providers route by it): keep it.
    return add_params_to_uri(endpoint, list(params.items()))


def exchange_code(cfg: SsoSettings, *, code: str, code_verifier: str) -> dict[str, Any]:
    doc = metadata(cfg)
    try:
        with _client(cfg) as c:
            token = c.fetch_token(doc["token_endpoint"], grant_type="authorization_code", code=code,
                                  code_verifier=code_verifier)
    except (AuthlibBaseError, httpx.HTTPError, ValueError) as e:  # the provider said no, or no answer
        raise SignInRefused("token_exchange", f"the code exchange failed: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(token, dict) or not isinstance(token.get("id_token"), str):
        raise SignInRefused("no_id_token", "the provider's token response holds no ID token")
    return dict(token)


def _decode(cfg: SsoSettings, id_token: str, algs: list[str]) -> Any:
    registry = JWSRegistry(algorithms=algs)
    try:
        return jwt.decode(id_token, _key_set(cfg), registry=registry)
    except InvalidKeyIdError:  # the provider rotated its keys since we cached them: fetch once more
        return jwt.decode(id_token, _key_set(cfg, force=True), registry=registry)


def validate_id_token(cfg: SsoSettings, token: dict[str, Any], *, nonce: str) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience, lifetime and nonce are right."""
    doc = metadata(cfg)
    algs = [a for a in doc.get("id_token_signing_alg_values_supported") or ["RS256"] if a in ACCEPTED_ALGS]
    if not algs:
        raise SignInRefused("provider_misconfigured", "the provider signs ID tokens with no accepted algorithm")
    try:
        decoded = _decode(cfg, token["id_token"], algs)
    except BadSignatureError:
        raise SignInRefused("bad_signature", "the ID token's signature does not verify") from None
    except (JoseError, ValueError) as e:
        raise SignInRefused("invalid_id_token", f"the ID token could not be read: {type(e).__name__}") from None
    claims = CodeIDToken(decoded.claims, decoded.header,
                         {"iss": {"essential": True, "value": cfg.issuer},
                          "aud": {"essential": True, "value": cfg.client_id}},
                         {"nonce": nonce, "client_id": cfg.client_id, "access_token": token.get("access_token")})
    try:
        claims.validate(leeway=cfg.leeway_s)
    except ExpiredTokenError:
        raise SignInRefused("expired", "the ID token has expired") from None
    except ClaimError as e:
        reason = {"aud": "wrong_audience", "azp": "wrong_audience", "nonce": "nonce_mismatch",
                  "iss": "wrong_issuer"}.get(e.claim, "invalid_claims")
        raise SignInRefused(reason, f"the ID token's {e.claim!r} claim is wrong or missing") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise SignInRefused("invalid_claims", "the ID token has no subject")
    return dict(claims)


def with_userinfo_groups(cfg: SsoSettings, token: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    """Many providers put groups only at the userinfo endpoint (OpenID Connect Core 5.4: scope claims
    go there when an access token is issued). When the ID token lacks the groups claim, it is read
    there, with the access token, from a response whose `sub` must be the ID token's (Core 5.3.2)."""
    if cfg.groups_claim in claims:
        return claims
    endpoint = metadata(cfg).get("userinfo_endpoint")
    if not isinstance(endpoint, str) or not token.get("access_token"):
        return claims
    try:
        with OAuth2Client(client_id=cfg.client_id, token=token, timeout=HTTP_TIMEOUT_S) as c:
            r = c.get(endpoint)
            r.raise_for_status()
            info = r.json()
    except (AuthlibBaseError, httpx.HTTPError, ValueError) as e:
        raise SignInRefused("provider_unreachable", f"the userinfo endpoint failed: {type(e).__name__}") from None
    if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
        raise SignInRefused("invalid_claims", "the userinfo response names another subject")
    if cfg.groups_claim in info:
        claims = {**claims, cfg.groups_claim: info[cfg.groups_claim]}
    return claims
