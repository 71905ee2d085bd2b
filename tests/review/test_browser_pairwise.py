"""Pairwise review on the reviewer page (headless Chromium, Playwright, real uvicorn): the prompt and two blind
answers side by side, keyboard picks with a reason, a majority against the stored order swapping the pair."""

from __future__ import annotations

import uuid

import pytest

from tests.review.test_browser import XSS, Server, browser, server, sign_in  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

CONV = [{"role": "user", "content": "My router keeps dropping the connection."},
        {"role": "assistant", "content": "Does it happen on every device?"},
        {"role": "user", "content": "Yes, on all of them."}]


def _pref_dataset(srv: Server, pairs: list[dict], approvals: int = 2) -> tuple[str, list[str]]:
    ds = srv.call("POST", "/v1/datasets", "curator",
                     json={"name": f"pair-{uuid.uuid4().hex[:6]}", "format": "preference",
                           "review_policy": {"required_approvals": approvals}}).json()
    r = srv.call("POST", f"/v1/datasets/{ds['id']}/examples", "curator", json=pairs)
    assert r.status_code == 201, r.text
    return ds["id"], [i["id"] for i in r.json()["items"]]


def _stored(srv: Server, eid: str) -> dict:
    return srv.call("GET", f"/v1/examples/{eid}", "admin").json()


def _side_showing(pg, text: str) -> str:
    return "a" if pg.get_by_test_id("answer-a").inner_text().endswith(text) else "b"


def _pick(pg, side: str, reason_key: str = "1", key: str | None = None) -> None:
    pg.keyboard.press(key or {"a": "1", "b": "2"}[side])
    pg.get_by_test_id("reason-dialog").wait_for()
    pg.keyboard.press(reason_key)
    pg.keyboard.press("Enter")


def test_pairwise_picks_by_keyboard_swap_the_pair(browser, server: Server) -> None:  # noqa: F811
    pairs = [{"prompt": CONV, "chosen": "Restart it; that always fixes everything.",
              "rejected": "Update the firmware and move it away from the microwave."},
             {"prompt": "Say hello politely.", "chosen": "Hello, nice to meet you.", "rejected": "Hey. " + XSS}]
    ds, ids = _pref_dataset(server, pairs)
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    sign_in(pg, server, "reviewer", dataset=ds)
    seen = {}
    for _ in range(2):
        eid = pg.get_by_test_id("example-id").inner_text()
        pg.get_by_test_id("pair-actions").wait_for()
        assert pg.get_by_test_id("approve").is_hidden()
        content = pg.get_by_test_id("content").inner_text()
        assert "chosen" not in content.lower() and "rejected" not in content.lower()  # blind
        stored = _stored(server, eid)["revision"]["content"]
        if isinstance(stored["prompt"], list):
            assert "Yes, on all of them." in pg.get_by_test_id("pair-prompt").inner_text()
            # The reviewer prefers the stored rejected answer; ArrowLeft / ArrowRight pick sides too.
            side = _side_showing(pg, stored["rejected"])
            _pick(pg, side, "2", key={"a": "ArrowLeft", "b": "ArrowRight"}[side])
        else:
            assert pg.locator("[data-testid=content] img").count() == 0 and pg.evaluate("window.__xss") is None
            side = _side_showing(pg, stored["chosen"])
            _pick(pg, side)
        pg.get_by_test_id("message").filter(has_text=" better").wait_for()
        seen[eid] = (side, stored)
    ctx.close()

    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    sign_in(pg, server, "reviewer2", dataset=ds)
    for _ in range(2):
        eid = pg.get_by_test_id("example-id").inner_text()
        _, stored = seen[eid]
        want = stored["rejected"] if isinstance(stored["prompt"], list) else stored["chosen"]
        _pick(pg, _side_showing(pg, want), "3")
        pg.get_by_test_id("message").filter(has_text="verdict").wait_for()
    ctx.close()

    conv_id = next(e for e, (_, st) in seen.items() if isinstance(st["prompt"], list))
    ex = _stored(server, conv_id)
    assert ex["status"] == "approved" and ex["revision"]["reason"] == "pairwise_swap"
    assert ex["revision"]["content"]["chosen"] == pairs[0]["rejected"]
    other = _stored(server, next(e for e in ids if e != conv_id))
    assert other["revision"]["reason"] != "pairwise_swap" and other["status"] == "approved"
    st = server.call("GET", "/v1/review/stats", "admin", params={"dataset": ds}).json()["pairwise"]
    assert st["verdicts"] == {"swapped": 1, "chosen": 1} and st["agreement"]["percent_agreement"] == 1.0
    first = {r["reviewer"].split("#")[0]: r for r in st["reviewers"]}["web-reviewer"]
    lefts = sum(1 for side, _ in seen.values() if side == "a")
    assert first["left_share"] == lefts / 2 and first["picks"]["a"] == lefts
