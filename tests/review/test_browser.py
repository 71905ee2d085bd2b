"""The reviewer page in Debian's headless Chromium (Playwright) against a real uvicorn server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import CHROMIUM, chromium

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


class Server:
    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url = url
        self.keys = keys

    def call(self, method: str, path: str, role: str, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.keys[role]}"},
                             timeout=60, **kw)

    def dataset(self, rows: list[dict], **policy) -> tuple[str, list[str]]:
        ds = self.call("POST", "/v1/datasets", "curator",
                       json={"name": f"web-{uuid.uuid4().hex[:6]}", "format": "instruction",
                             "review_policy": policy}).json()
        r = self.call("POST", f"/v1/datasets/{ds['id']}/examples", "curator", json=rows)
        assert r.status_code == 201, r.text
        return ds["id"], [i["id"] for i in r.json()["items"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium not installed (./scripts/ensure-browser.sh)")
    pytest.importorskip("playwright")
    db = tmp_path_factory.mktemp("web") / "pedigree.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEDIGREE_")}
    env.update(PEDIGREE_DATABASE_URL=f"sqlite:///{db}", PEDIGREE_EMBEDDED="true",
               PEDIGREE_SECRET_KEY="browser-test-secret-0123456789")
    out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role", "admin", "--name", "web-admin"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    admin = out.stdout.strip().splitlines()[-1]
    from bench.common import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        keys = {"admin": admin}
        for name, role in (("curator", "curator"), ("reviewer", "reviewer"), ("reviewer2", "reviewer")):
            r = httpx.post(url + "/v1/keys", json={"name": f"web-{name}", "role": role},
                           headers={"Authorization": f"Bearer {admin}"})
            keys[name] = r.json()["key"]
        yield Server(url, keys)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, server: Server):
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()


def sign_in(page, server: Server, role: str = "reviewer", dataset: str | None = None) -> None:
    page.goto(server.url + "/review" + (f"?dataset={dataset}" if dataset else ""))
    page.get_by_test_id("api-key").fill(server.keys[role])
    page.get_by_test_id("sign-in").click()
    page.wait_for_url("**/review")
    if dataset:
        page.goto(server.url + f"/review?dataset={dataset}")
    page.get_by_test_id("content").wait_for()


def rows(n: int, tag: str, **extra) -> list[dict]:
    return [{"instruction": f"How do I do task {i} ({tag})?", "input": "",
             "output": f"Open the settings page and follow step {i}, then save.", **extra} for i in range(n)]


def status(server: Server, eid: str) -> dict:
    return server.call("GET", f"/v1/examples/{eid}", "auditor" if "auditor" in server.keys else "admin").json()


def test_sign_in_approve_and_reject_with_a_reason(page, server: Server) -> None:
    ds, ids = server.dataset(rows(3, "flow"))
    sign_in(page, server, dataset=ds)
    cookie = next(c for c in page.context.cookies() if c["name"] == "pedigree_review")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert server.keys["reviewer"] not in cookie["value"]
    first = page.get_by_test_id("example-id").inner_text()
    assert first in ids
    page.keyboard.press("a")
    page.get_by_test_id("message").filter(has_text="Approved").wait_for()
    second = page.get_by_test_id("example-id").inner_text()
    assert second != first
    page.keyboard.press("r")
    page.get_by_test_id("reason-dialog").wait_for()
    page.keyboard.press("2")  # the second default reason: formatting
    page.keyboard.press("Enter")
    page.get_by_test_id("message").filter(has_text="Rejected").wait_for()
    assert "you: 2" in page.get_by_test_id("progress").inner_text()
    assert status(server, first)["status"] == "approved"
    rejected = status(server, second)
    assert rejected["status"] == "rejected"
    assert rejected["review"]["decisions"][0]["reason_code"] == "formatting"


def test_four_eyes_refusal_after_editing(page, server: Server) -> None:
    ds, ids = server.dataset(rows(1, "eyes"))
    sign_in(page, server, dataset=ds)
    page.keyboard.press("e")
    area = page.get_by_test_id("edit-output")
    area.fill("Open Settings, choose Security, and follow the emailed link.")
    page.keyboard.press("Control+Enter")
    page.get_by_test_id("message").filter(has_text="Saved revision").wait_for()
    page.get_by_test_id("notice").filter(has_text="four eyes").wait_for()
    page.keyboard.press("a")
    msg = page.get_by_test_id("message").filter(has_text="Four eyes")
    msg.wait_for()
    ex = status(server, ids[0])
    assert ex["status"] == "pending_review" and ex["review"]["approvals"] == 0
    assert ex["revision"]["reason"] in ("reviewer_edit", "pii_scrub")


def test_untrusted_text_is_shown_as_text_and_placeholders_highlighted(page, server: Server) -> None:
    ds, _ids = server.dataset([{"instruction": "Reply to <PERSON> about the refund, politely.", "input": XSS,
                               "output": "Dear <PERSON>, your refund is on its way. " + XSS}])
    sign_in(page, server, dataset=ds)
    content = page.get_by_test_id("content")
    assert "<script>window.__xss = 1</script>" in content.inner_text()
    assert content.locator("img").count() == 0 and content.locator("script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert content.locator("mark.pii").count() >= 2
    shot = os.environ.get("PEDIGREE_TEST_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=False)


def test_an_evaluation_item_inside_the_example_is_shown(page, server: Server) -> None:
    q = "Which planet in the solar system has the longest day, longer even than its own year around the Sun?"
    a = "Venus takes about 243 Earth days to turn once, longer than the 225 days it needs to orbit the Sun."
    ev = server.call("POST", "/v1/datasets", "curator", json={"name": f"eval-{uuid.uuid4().hex[:6]}",
                                                              "format": "instruction", "is_eval_set": True}).json()
    assert server.call("POST", f"/v1/datasets/{ev['id']}/examples", "curator",
                       json=[{"instruction": q, "input": "", "output": a}]).status_code == 201
    filler = " ".join(f"Note {i}: the observatory opens at nine and closes at five on weekdays." for i in range(10))
    ds, (eid,) = server.dataset([{"instruction": "Summarise the visitor notes.", "input": "",
                                  "output": f"{filler} {q} {a} {filler}"}])
    assert status(server, eid)["contaminates_eval"] is True
    sign_in(page, server, dataset=ds)
    match = page.get_by_test_id("eval-match")
    match.wait_for()
    assert "evaluation set" in match.inner_text() and "contains / contained" in match.inner_text()
    assert "left out of snapshots" in match.inner_text()


def test_signed_out_page_and_bad_key(page, server: Server) -> None:
    page.goto(server.url + "/review")
    page.get_by_test_id("api-key").fill("pdg_nope_nope")
    page.get_by_test_id("sign-in").click()
    page.get_by_role("alert").filter(has_text="not accepted").wait_for()
    r = httpx.post(server.url + "/review/api/examples/x/decision", json={})
    assert r.status_code == 401


def test_screenshot_for_the_docs(page, server: Server) -> None:
    """Writes docs/review.png when PEDIGREE_TEST_SCREENSHOT_DOCS=1 (a realistic, busy item)."""
    if not os.environ.get("PEDIGREE_TEST_SCREENSHOT_DOCS"):
        pytest.skip("set PEDIGREE_TEST_SCREENSHOT_DOCS=1 to refresh docs/review.png")
    ds, ids = server.dataset([
        {"instruction": "A customer asks how to export invoices.", "input": "",
         "output": "Go to Billing, pick the date range and press Export CSV."},
        {"instruction": "A customer asks how to reset a forgotten password.",
         "input": "Customer Maria Keller (maria.keller@example.org, +44 20 7946 0958) writes: I can't log in "
                  "since Tuesday, ticket 1042. <script>alert('hi')</script>",
         "output": "Hi Maria Keller, open Settings → Security and choose “Reset password”; the link we email to "
                   "maria.keller@example.org is valid for 30 minutes."},
    ], required_approvals=2)
    busy = ids[1]
    server.call("POST", f"/v1/examples/{busy}/suggestions", "reviewer2",
                json={"model": "judge-small", "label": "approve", "score": 0.87, "comment": "polite, accurate"})
    server.call("POST", f"/v1/examples/{busy}/reviews", "reviewer2",
                json={"decision": "approve", "revision_id": status(server, busy)["revision"]["id"]})
    sign_in(page, server, dataset=ds)
    page.keyboard.press("a")
    page.get_by_test_id("message").filter(has_text="Approved").wait_for()
    assert page.get_by_test_id("example-id").inner_text() == busy
    os.makedirs(ROOT / "docs", exist_ok=True)
    page.screenshot(path=str(ROOT / "docs" / "review.png"), full_page=True)
