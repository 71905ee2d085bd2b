"""Single sign-on for the review page against a real OpenID provider (panva's oidc-provider on node,
tests/security/oidc/provider.mjs), through headless Chromium, on SQLite and PostgreSQL.

The provider's people: alice and dave in `reviewers-a`, carol in `curators-a` and `reviewers-b`, bob in
`marketing` (mapped to nothing). Refused sign-ins use the provider's own behaviour (a replayed callback,
a state this browser did not start) or an ID token it re-signs wrong in exactly one way (a second key
set, another audience, an expired token, another nonce): provider.mjs's /__test/fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import CHROMIUM, chromium, scratch_database

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = ROOT / "tests" / "security" / "oidc"
NODE = "/usr/bin/node"
CLIENT_ID = "pedigree-review"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"
GROUP_ROLES = {"reviewers-a": {"team-a": "reviewer"}, "curators-a": {"team-a": "curator"},
               "reviewers-b": {"team-b": "reviewer"}}


def _wait(url: str, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


class World:
    def __init__(self, url: str, issuer: str, admin: str) -> None:
        self.url, self.issuer, self.admin = url, issuer, admin
        self.datasets: dict[str, str] = {}
        self.examples: dict[str, list[str]] = {}

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.admin}"}, timeout=120, **kw)

    def fault(self, name: str | None) -> None:
        assert httpx.post(self.issuer + "/__test/fault", content=json.dumps({"fault": name})).status_code == 204

    def events(self, action: str) -> list[dict]:
        r = self.call("GET", "/v1/audit/events", params={"action": action, "limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["items"]


@contextmanager
def serve(backend: str, tmp_path_factory: pytest.TempPathFactory, *, rp_logout: bool = True) -> Iterator[World]:
    """A provider and an API signing in with it, on a fresh database of `backend`, with two teams' data.
    `rp_logout=False`: a provider without RP-initiated logout (no end_session_endpoint)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium not installed (./scripts/ensure-browser.sh)")
    if not (PROVIDER / "node_modules" / "oidc-provider").exists():
        pytest.fail("the test OpenID provider is not installed: `make install` runs `npm ci` in tests/security/oidc")
    from bench.common import free_port

    app_port, op_port = free_port(), free_port()
    url, issuer = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{op_port}"
    stack = ExitStack()
    db = stack.enter_context(scratch_database(backend, tmp_path_factory.mktemp("sso"), "pedigree_sso"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEDIGREE_")}
    env.update(PEDIGREE_DATABASE_URL=db, PEDIGREE_EMBEDDED="true", PEDIGREE_SECRET_KEY="sso-test-secret-0123456789",
               PEDIGREE_SSO_ISSUER=issuer, PEDIGREE_SSO_CLIENT_ID=CLIENT_ID, PEDIGREE_SSO_CLIENT_SECRET=CLIENT_SECRET,
               PEDIGREE_SSO_REDIRECT_URL=url + "/review/sso/callback", PEDIGREE_SSO_GROUP_ROLES=json.dumps(GROUP_ROLES))
    # The post-logout redirect is left to its default (/review/sso/signed-out on the callback's origin):
    # the provider refuses any URI not registered, so this also checks the default.
    op = subprocess.Popen([NODE, "provider.mjs"], cwd=PROVIDER, stdout=subprocess.DEVNULL,
                          env={**os.environ, "PORT": str(op_port), "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET,
                               "REDIRECT_URI": url + "/review/sso/callback",
                               "POST_LOGOUT_REDIRECT_URI": url + "/review/sso/signed-out",
                               "RP_LOGOUT": "on" if rp_logout else "off"})
    api = None
    try:
        _wait(issuer + "/.well-known/openid-configuration", op, "oidc-provider")
        out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role", "admin", "--name", "sso-admin"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        admin = out.stdout.strip().splitlines()[-1]
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                                str(app_port), "--log-level", "warning"], cwd=ROOT, env=env)
        _wait(url + "/healthz", api, "the API")
        w = World(url, issuer, admin)
        for team in ("team-a", "team-b"):
            assert w.call("POST", "/v1/workspaces", json={"name": team}).status_code == 201
            ds = w.call("POST", "/v1/datasets", json={"name": f"{team}-notes", "format": "instruction",
                                                      "workspace": team}).json()
            rows = [{"instruction": f"How do I reset the {team} printer, step {i}?", "input": "",
                     "output": f"Hold the power button for ten seconds, then wait for step {i} to finish."}
                    for i in range(6)]
            r = w.call("POST", f"/v1/datasets/{ds['id']}/examples", json=rows)
            assert r.status_code == 201, r.text
            w.datasets[team] = ds["id"]
            w.examples[team] = [i["id"] for i in r.json()["items"]]
        yield w
    finally:
        for proc in (api, op):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
        stack.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serve(request.param, tmp_path_factory) as w:
        yield w


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()


def sso_sign_in(page, world: World, who: str) -> None:
    """Through the provider's own login form, as a person would."""
    page.goto(world.url + "/review")
    page.get_by_test_id("sso-sign-in").click()
    page.wait_for_url(world.issuer + "/**")
    page.locator("input[name=login]").fill(who)
    page.locator("input[name=password]").fill("any password")
    page.locator("button[type=submit]").click()
    page.wait_for_url(world.url + "/review**")


def sso_cookie(page) -> dict | None:
    return next((c for c in page.context.cookies() if c["name"] == "pedigree_sso"), None)


def csrf(page) -> str:
    return page.locator('meta[name="csrf-token"]').get_attribute("content")


def decide(page, world: World, eid: str, token: str | None) -> object:
    """A decision from the page's session (its cookie), with or without the page's CSRF header."""
    rid = world.call("GET", f"/v1/examples/{eid}").json()["revision"]["id"]
    headers = {"Origin": world.url, **({"X-CSRF-Token": token} if token is not None else {})}
    return page.request.post(world.url + f"/review/api/examples/{eid}/decision", headers=headers,
                             data={"decision": "approve", "revision_id": rid})


# --- the core ----------------------------------------------------------------------------------------------

def test_sign_in_acts_with_the_groups_roles_and_the_audit_log_names_the_person(page, world: World) -> None:
    sso_sign_in(page, world, "alice")
    page.get_by_test_id("content").wait_for()
    assert "alice@example.test" in page.get_by_test_id("who").inner_text()
    options = page.get_by_test_id("dataset").locator("option").all_inner_texts()
    assert [o.split(" (")[0] for o in options] == ["team-a-notes"]  # team-b is not hers to see
    cookie = sso_cookie(page)
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]  # plain http here
    first = page.get_by_test_id("example-id").inner_text()
    assert first in world.examples["team-a"]
    page.keyboard.press("a")
    page.get_by_test_id("message").filter(has_text="Approved").wait_for()
    # Outside her workspaces an example is a 404, exactly as for a key.
    other = page.request.get(world.url + f"/review/api/examples/{world.examples['team-b'][0]}")
    assert other.status == 404
    decided = [e for e in world.events("review.decided") if e["entity_id"] == first]
    assert len(decided) == 1
    assert decided[0]["payload"]["sso"] == {"iss": world.issuer, "sub": "alice"}
    assert decided[0]["actor"].startswith("alice@example.test (sso)#")
    signed = [e for e in world.events("sso.signed_in") if e["payload"]["sso"]["sub"] == "alice"]
    assert signed and signed[-1]["payload"]["roles"] == [
        {"workspace": "team-a", "workspace_id": signed[-1]["payload"]["roles"][0]["workspace_id"], "role": "reviewer"}]
    assert signed[-1]["payload"]["groups"] == ["reviewers-a"] and signed[-1]["payload"]["groups_source"] == "id_token"
    assert world.call("GET", "/v1/audit/verify").json()["ok"] is True


def test_roles_are_per_workspace(page, world: World) -> None:
    """carol: curator in team-a (no reviewing there), reviewer in team-b."""
    sso_sign_in(page, world, "carol")
    page.get_by_test_id("content").wait_for()
    token = csrf(page)
    assert decide(page, world, world.examples["team-b"][0], token).status == 200
    r = decide(page, world, world.examples["team-a"][1], token)
    assert r.status == 403 and r.json()["error"]["details"]["role"] == "curator"
    r = page.request.get(world.url + f"/review/api/examples/{world.examples['team-a'][1]}")
    assert r.status == 403 and r.json()["error"]["details"]["role"] == "curator"


def test_a_group_that_maps_to_no_role_is_signed_in_with_no_access_and_told(page, world: World) -> None:
    sso_sign_in(page, world, "bob")
    notice = page.get_by_test_id("no-access")
    notice.wait_for()
    assert "no reviewer role" in notice.inner_text()
    assert "marketing" in page.get_by_test_id("groups").inner_text()
    r = page.request.get(world.url + f"/review/api/next?dataset={world.datasets['team-a']}")
    assert r.status == 403 and r.json()["error"]["code"] == "no_access"
    signed = [e for e in world.events("sso.signed_in") if e["payload"]["sso"]["sub"] == "bob"]
    assert signed[-1]["payload"]["roles"] == [] and signed[-1]["payload"]["unmapped_groups"] == ["marketing"]


def test_groups_only_at_userinfo_are_read_there(page, world: World) -> None:
    world.fault("groups_at_userinfo")
    try:
        sso_sign_in(page, world, "alice")
    finally:
        world.fault(None)
    page.get_by_test_id("content").wait_for()
    signed = [e for e in world.events("sso.signed_in") if e["payload"]["sso"]["sub"] == "alice"][-1]
    assert signed["payload"]["groups"] == ["reviewers-a"] and signed["payload"]["groups_source"] == "userinfo"
    assert [r["role"] for r in signed["payload"]["roles"]] == ["reviewer"]


def test_api_key_sign_in_still_works_beside_sso(page, world: World) -> None:
    key = world.call("POST", "/v1/keys", json={"name": "embedded-reviewer", "role": "reviewer",
                                               "workspace": "team-b"}).json()["key"]
    page.goto(world.url + "/review")
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("sign-in").click()
    page.get_by_test_id("content").wait_for()
    assert "embedded-reviewer" in page.get_by_test_id("who").inner_text()


# --- refused sign-ins and ended sessions -------------------------------------------------------------------

def refused(page, world: World, reason: str) -> None:
    """The sign-in ended on the sign-in page, naming `reason`; no session; one audit event saying why."""
    page.get_by_test_id("sso-refused").wait_for()
    assert f"reason={reason}" in page.url
    assert f"({reason})" in page.get_by_test_id("sso-refused").inner_text()
    assert sso_cookie(page) is None
    assert page.request.get(world.url + f"/review/api/next?dataset={world.datasets['team-a']}").status == 401
    assert any(e["payload"]["reason"] == reason for e in world.events("sso.sign_in_refused"))


@pytest.mark.parametrize(("fault", "reason"), [
    ("bad_signature", "bad_signature"),    # signed by a key set the provider never published
    ("wrong_audience", "wrong_audience"),  # the provider's own key, issued to another client
    ("expired", "expired"),                # the provider's own key, exp an hour ago
    ("wrong_nonce", "nonce_mismatch"),     # the provider's own key, a nonce this sign-in did not send
])
def test_a_bad_id_token_is_refused(page, world: World, fault: str, reason: str) -> None:
    world.fault(fault)
    try:
        sso_sign_in(page, world, "alice")
    finally:
        world.fault(None)
    refused(page, world, reason)
    # The same person, a good token: signed in (the refusal was the token's, nothing else). Cookies
    # cleared: the provider's own session would otherwise skip its login form.
    page.context.clear_cookies()
    sso_sign_in(page, world, "alice")
    page.get_by_test_id("content").wait_for()


def test_a_replayed_callback_is_refused(page, world: World) -> None:
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/review/sso/callback" in r.url else None)
    sso_sign_in(page, world, "alice")
    page.get_by_test_id("content").wait_for()
    (url,) = callbacks
    state = url.split("state=", 1)[1].split("&", 1)[0]
    # Even with the state cookie put back, the state was used up by the first callback.
    page.context.clear_cookies()
    page.context.add_cookies([{"name": "pedigree_sso_state", "value": state, "url": world.url + "/review/sso/"}])
    page.goto(url)
    refused(page, world, "state")


def _attacker_callback(world: World, who: str) -> tuple[httpx.Client, str]:
    """Someone's own sign-in, stopped before the provider's redirect to the callback is followed: the
    callback URL (their code, their state) that a login-CSRF attack would make a victim's browser open."""
    c = httpx.Client(timeout=30, follow_redirects=False)
    html = c.get(world.url + "/review").text
    pre = html.split('name="pre" value="', 1)[1].split('"', 1)[0]
    r = c.post(world.url + "/review/sso/start", data={"pre": pre}, headers={"Origin": world.url})
    assert r.status_code == 303, r.text
    r = c.get(r.headers["location"])
    while r.status_code in (302, 303) and not r.headers["location"].startswith(world.url):
        r = c.get(httpx.URL(str(r.url)).join(r.headers["location"]))
    action = r.text.split('action="', 1)[1].split('"', 1)[0]
    r = c.post(httpx.URL(str(r.url)).join(action), data={"prompt": "login", "login": who, "password": "x"})
    while not r.headers["location"].startswith(world.url):
        r = c.get(httpx.URL(str(r.url)).join(r.headers["location"]))
    return c, r.headers["location"]


def test_a_callback_this_browser_did_not_start_is_refused(page, world: World) -> None:
    attacker, url = _attacker_callback(world, "dave")
    page.goto(url)  # the victim's browser: no state cookie of this sign-in
    refused(page, world, "state")
    page.goto(url.replace("state=", "state=x"))  # and a state that was never issued
    refused(page, world, "state")
    # The URL itself was good: in the browser that started it, it signs in (the refusals were the binding).
    r = attacker.get(url)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    assert attacker.cookies.get("pedigree_sso")
    attacker.close()


def test_a_decision_without_the_csrf_token_is_403(page, world: World) -> None:
    sso_sign_in(page, world, "dave")
    page.get_by_test_id("content").wait_for()
    eid = world.examples["team-a"][3]
    r = decide(page, world, eid, None)
    assert r.status == 403 and r.json()["error"]["code"] == "csrf"
    r = decide(page, world, eid, "0" * 64)
    assert r.status == 403 and r.json()["error"]["code"] == "csrf"
    assert world.call("GET", f"/v1/examples/{eid}").json()["review"]["decisions"] == []
    assert decide(page, world, eid, csrf(page)).status == 200


def sso_sign_out(page, world: World) -> None:
    """The page's Sign out, then the provider's own confirmation, as a person would."""
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(world.issuer + "/session/end**")
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(world.url + "/review/sso/signed-out**")
    page.get_by_test_id("signed-out").wait_for()


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(page, browser, world: World) -> None:
    sso_sign_in(page, world, "alice")
    page.get_by_test_id("content").wait_for()
    old = sso_cookie(page)
    sso_sign_out(page, world)
    assert sso_cookie(page) is None
    ctx = browser.new_context()  # a copy of the cookie, elsewhere
    try:
        ctx.add_cookies([{"name": old["name"], "value": old["value"], "url": world.url + "/review"}])
        r = ctx.request.get(world.url + f"/review/api/next?dataset={world.datasets['team-a']}")
        assert r.status == 401 and r.json()["error"]["code"] == "signed_out"
        assert ctx.request.post(world.url + f"/review/api/examples/{world.examples['team-a'][4]}/release",
                                headers={"Origin": world.url}).status == 401
        other = ctx.new_page()
        other.goto(world.url + "/review")
        other.get_by_test_id("sso-sign-in").wait_for()  # the sign-in page, not the queue
    finally:
        ctx.close()
    assert any(e["payload"]["sso"]["sub"] == "alice" for e in world.events("sso.signed_out"))


def test_sign_out_ends_the_session_at_the_provider_too(page, world: World) -> None:
    """RP-initiated logout: after sign-out, signing in again takes the person's credentials at the provider."""
    logins: list[str] = []  # the provider's login form (its interaction pages), each time it is shown
    page.on("framenavigated", lambda f: logins.append(f.url) if "/interaction/" in f.url else None)
    sso_sign_in(page, world, "alice")
    page.get_by_test_id("content").wait_for()
    assert len(logins) == 1
    # While the provider's session lives, a sign-in passes it without asking: drop only our session.
    page.context.clear_cookies(name="pedigree_sso")
    page.goto(world.url + "/review")
    page.get_by_test_id("sso-sign-in").click()
    page.get_by_test_id("content").wait_for()
    assert len(logins) == 1, logins

    sso_sign_out(page, world)
    assert page.get_by_test_id("signed-out").get_attribute("data-provider") == "ended"
    assert "identity provider" in page.get_by_test_id("signed-out").inner_text()
    out = [e for e in world.events("sso.signed_out") if e["payload"]["sso"]["sub"] == "alice"][-1]
    assert out["payload"]["provider_sign_out"] == "requested"
    # The provider's session is gone: the next sign-in stops at its login form.
    page.get_by_test_id("sso-sign-in").click()
    page.locator("input[name=password]").wait_for()
    assert len(logins) == 2 and page.url.startswith(world.issuer + "/interaction/")
    page.locator("input[name=login]").fill("alice")
    page.locator("input[name=password]").fill("any password")
    page.locator("button[type=submit]").click()
    page.get_by_test_id("content").wait_for()
    # The signed-out page claims the provider's session ended only for the state this browser was given.
    page.goto(world.url + "/review/sso/signed-out?state=sent-by-someone-else")
    assert page.get_by_test_id("signed-out").get_attribute("data-provider") is None


@pytest.fixture(scope="module")
def local_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A provider without RP-initiated logout (no end_session_endpoint), on SQLite."""
    with serve("sqlite", tmp_path_factory, rp_logout=False) as w:
        yield w


def test_without_an_end_session_endpoint_sign_out_is_local_and_says_so(local_world: World) -> None:
    w = local_world
    assert "end_session_endpoint" not in httpx.get(w.issuer + "/.well-known/openid-configuration").json()
    c, url = _attacker_callback(w, "alice")
    assert c.get(url).status_code == 303 and c.cookies.get("pedigree_sso")
    html = c.get(w.url + "/review").text
    token = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    r = c.post(w.url + "/review/session/delete", data={"csrf": token}, headers={"Origin": w.url})
    assert r.status_code == 303 and r.headers["location"] == "/review?signed_out=unsupported"
    assert not c.cookies.get("pedigree_sso")
    page = c.get(w.url + r.headers["location"]).text
    assert 'data-provider="kept"' in page and "may still be signed in there" in " ".join(page.split())
    out = [e for e in w.events("sso.signed_out") if e["payload"]["sso"]["sub"] == "alice"][-1]
    assert out["payload"]["provider_sign_out"] == "unsupported"
    # What the page says is so: the provider's session outlived ours, the next sign-in asks for nothing.
    pre = page.split('name="pre" value="', 1)[1].split('"', 1)[0]
    r = c.post(w.url + "/review/sso/start", data={"pre": pre}, headers={"Origin": w.url})
    while not r.headers["location"].startswith(w.url):
        assert "/interaction/" not in r.headers["location"]
        r = c.get(httpx.URL(str(r.url)).join(r.headers["location"]))
    assert "/review/sso/callback" in r.headers["location"]
    c.close()


def test_revoking_the_persons_key_locks_them_out(page, world: World) -> None:
    sso_sign_in(page, world, "dave")
    page.get_by_test_id("content").wait_for()
    key_id = [e for e in world.events("sso.signed_in") if e["payload"]["sso"]["sub"] == "dave"][-1]["payload"]["key_id"]
    assert world.call("DELETE", f"/v1/keys/{key_id}").status_code in (200, 204)
    r = page.request.get(world.url + f"/review/api/next?dataset={world.datasets['team-a']}")
    assert r.status == 401
    page.context.clear_cookies()
    sso_sign_in(page, world, "dave")
    refused(page, world, "key_revoked")


def test_the_session_cookie_is_secure_when_served_over_tls(world: World) -> None:
    """Behind a TLS-terminating proxy (uvicorn trusts X-Forwarded-Proto from 127.0.0.1): Secure, HttpOnly, Lax."""
    c, url = _attacker_callback(world, "alice")
    r = c.get(url, headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303
    (cookie,) = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("pedigree_sso=")]
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=lax", "path=/review"} <= flags, cookie
    c.close()
