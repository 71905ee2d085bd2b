"""Dataset PII profiles through the API, on SQLite and PostgreSQL (docs/pii.md, "Profiles")."""

from __future__ import annotations

import orjson
import pytest

from app.pii.schemas import PROFILES, effective_policy, layered
from tests.factories import new_dataset


def _ingest(api, ds, items):
    body = b"\n".join(orjson.dumps(i) for i in items)
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text


def _example(api, ds):
    [item] = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]
    return api.as_("reviewer").get(f"/v1/examples/{item['id']}").json()


def test_presets_are_valid_policies():
    for name in PROFILES:
        effective_policy(name, {})
    assert effective_policy("code", {}).context.code_lines == "on"
    assert effective_policy("clinical", {}).public_entities == "scrub"
    assert effective_policy("math_word_problems", {}).operator_for("PERSON").type == "surrogate"
    # The owner's policy goes over the preset, one level deep for operators and context.
    merged = layered("math_word_problems", {"operators": {"EMAIL_ADDRESS": {"type": "hash"}}})
    assert set(merged["operators"]) == {"PERSON", "LOCATION", "EMAIL_ADDRESS"}
    # A preset operator for a type the owner stops scrubbing goes with it.
    assert effective_policy("math_word_problems", {"entities": ["EMAIL_ADDRESS"]}).operators == {}


def test_profile_at_creation_is_stored_and_shown(api, db):
    ds = new_dataset(api, "completion", pii_profile="support_transcripts")
    assert ds["pii_profile"] == "support_transcripts"
    got = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}").json()
    assert got["pii_profile"] == "support_transcripts"
    eff = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/pii-policy").json()
    assert eff["pii_profile"] == "support_transcripts" and eff["public_entities"] == "scrub"
    assert "DATE_TIME" in eff["entities"] and eff["operators"]["PERSON"]["type"] == "surrogate"
    assert new_dataset(api, "completion")["pii_profile"] == "default"


def test_unknown_profile_is_422_naming_the_field(api, db):
    r = api.as_("curator").post("/v1/datasets", json={"name": "np", "format": "chat", "pii_profile": "legal"})
    assert r.status_code == 422
    detail = r.json()["error"]["details"][0]
    assert detail["field"] == "pii_profile" and "math_word_problems" in detail["message"]
    r = api.as_("curator").post("/v1/datasets", json={"name": "np2", "format": "chat", "pii_profile": "math_word_problems",
                                                      "pii_policy": {"entities": ["EMAIL_ADDRESS"],
                                                                     "operators": {"PERSON": {"type": "hash"}}}})
    assert r.status_code == 422 and "pii_policy" in r.json()["error"]["message"]


def test_math_profile_keeps_problems_solvable(api, db):
    ds = new_dataset(api, "instruction", pii_profile="math_word_problems")
    problem = "Natasha has 3 apples and Oliver has 5. Natasha gives Oliver 2 apples. How many does Oliver have?"
    _ingest(api, ds, [{"instruction": problem, "output": "Oliver has 7 apples."}])
    content = _example(api, ds)["revision"]["content"]
    text = content["instruction"]
    assert "<PERSON>" not in text and "Natasha" not in text and "Oliver" not in text
    assert "3 apples" in text and "has 5" in text and "2 apples" in text
    # One surrogate per name, the same wherever the name recurs in the example.
    words = text.split()
    first = words[0]
    assert text.count(first) == 2 and first != words[text.split().index("and") + 1]


def test_code_profile_and_default_on_code(api, db):
    code = "def add(num1, num2):\n    return num1 + num2\n\nprint(add(Java, Python))"
    for profile in ("code", "default"):
        ds = new_dataset(api, "instruction", pii_profile=profile)
        _ingest(api, ds, [{"instruction": "Write a Python function that adds two numbers.", "output": code}])
        ex = _example(api, ds)
        assert ex["revision"]["content"]["output"] == code, profile


def test_profile_change_applies_from_then_on(api, db):
    ds = new_dataset(api, "completion")
    _ingest(api, ds, [{"prompt": "Albert Einstein lived in Princeton.", "completion": "Yes."}])
    assert _example(api, ds)["revision"]["content"]["prompt"] == "Albert Einstein lived in Princeton."
    # The profile changes through the policy endpoint, which re-scrubs what was scrubbed before.
    r = api.as_("curator").request("PUT", f"/v1/datasets/{ds['id']}/pii-policy", json={"pii_profile": "clinical"})
    assert r.status_code == 200 and r.json()["pii_profile"] == "clinical", r.text
    assert api.as_("reviewer").get(f"/v1/datasets/{ds['id']}").json()["pii_profile"] == "clinical"
    r = api.as_("curator").request("PUT", f"/v1/datasets/{ds['id']}/pii-policy", json={"pii_profile": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "pii_profile"
    assert api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"pii_profile": "code"}).status_code == 422
    _ingest(api, ds, [{"prompt": "Albert Einstein lived in Princeton, said Dr. Mira Olsen.", "completion": "Yes."}])
    items = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]
    texts = [api.as_("reviewer").get(f"/v1/examples/{i['id']}").json()["revision"]["content"]["prompt"]
             for i in items]
    new = next(t for t in texts if "said" in t)
    assert "Einstein" not in new and "Mira Olsen" not in new
    assert all("Einstein" not in t for t in texts)  # the first one too, once the re-scrub has run
    # The policy endpoint's output can be PUT back as it is, and may switch the profile.
    eff = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/pii-policy").json()
    eff["pii_profile"] = "code"
    r = api.as_("curator").request("PUT", f"/v1/datasets/{ds['id']}/pii-policy", json=eff)
    assert r.status_code == 200 and r.json()["pii_profile"] == "code"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_scrubs_contact_details(api, db, profile):
    ds = new_dataset(api, "completion", pii_profile=profile)
    _ingest(api, ds, [{"prompt": "Reach Maria Garcia at maria.garcia@example.org or 212-555-0187.",
                       "completion": "ok"}])
    text = _example(api, ds)["revision"]["content"]["prompt"]
    assert "maria.garcia@example.org" not in text and "212-555-0187" not in text and "Maria Garcia" not in text
