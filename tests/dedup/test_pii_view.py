"""Dedup compares scrubbed examples through the comparison view (scrubbed spans as keyed hashes of their
values), on SQLite and PostgreSQL: templated questions that differ only in a scrubbed name stay apart,
the same question with the same name still links, exact copies still link at ingest, and the view holds
no raw value."""

import uuid

import orjson
from sqlalchemy import select

from app.core.db import session_scope
from app.dedup.store import load_docs
from app.models.pii import PiiFinding
from app.pii.tokens import TOKEN_RE, VIEW_PREFIX, token_key, value_token, view_words, word_count
from tests.factories import new_dataset

NDJSON = {"Content-Type": "application/x-ndjson"}


def q(place: str, tail: str = "Answer with the name of the city only.") -> str:
    return f"What is the capital of {place}? {tail}"


def ingest(api, ds, rows):
    body = b"\n".join(orjson.dumps({"instruction": text, "input": "", "output": "Look it up in the atlas.",
                                    "provenance": {"source": "t", "source_ref": ref}}) for ref, text in rows)
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body, headers=NDJSON)
    assert r.status_code == 200 and r.json()["accepted"] == len(rows), r.text
    out = api.as_("admin").get(f"/v1/datasets/{ds['id']}/examples?limit=100").json()["items"]
    return {i["provenance"]["source_ref"]: i for i in out}


def test_names_that_differ_stay_apart_and_the_same_name_links(api):
    ds = new_dataset(api, pii_policy={"public_entities": "scrub"})  # countries scrubbed, to test the view
    ex = ingest(api, ds, [
        ("fr", q("France")),
        ("jp", q("Japan")),
        # The same question with the same name: punctuation and spacing differ, so it is no exact copy.
        ("fr2", q("France", "Answer with  the name of the city only!")),
        ("fr3", q("France")),  # a byte-identical copy: ingest's exact link
    ])
    # All three are scrubbed to the same "<LOCATION>" text; only the view tells France from Japan.
    assert all("<LOCATION>" in ex[k]["revision"]["content"]["instruction"] for k in ex)
    assert ex["fr"]["status"] == "pending_review" and ex["jp"]["status"] == "pending_review"
    assert ex["fr2"]["status"] == "duplicate" and ex["fr3"]["status"] == "duplicate"
    assert ex["fr2"]["duplicates"][0]["example_id"] == ex["fr"]["id"]
    assert ex["fr2"]["duplicates"][0]["method"] == "minhash"
    assert ex["fr3"]["duplicates"][0]["method"] == "exact"
    clusters = api.as_("curator").get(f"/v1/datasets/{ds['id']}/duplicates").json()["clusters"]
    assert len(clusters) == 1 and clusters[0]["canonical"] == ex["fr"]["id"] and clusters[0]["size"] == 3


def test_the_view_holds_tokens_and_no_raw_value(api):
    ds = new_dataset(api, pii_policy={"public_entities": "scrub"})  # countries scrubbed, to test the view
    ex = ingest(api, ds, [("fr", q("France")), ("jp", q("Japan")), ("fr2", q("France", "One word, please."))])
    with session_scope() as s:
        docs = load_docs(s, [uuid.UUID(ex[k]["id"]) for k in ("fr", "jp", "fr2")])
        texts = {k: docs[uuid.UUID(ex[k]["id"])].text for k in ("fr", "jp", "fr2")}
        tokens = dict(s.execute(select(PiiFinding.example_id, PiiFinding.value_token)).all())
    for t in texts.values():
        assert "France" not in t and "Japan" not in t and "<LOCATION>" not in t
    key = token_key()
    fr, jp = value_token(key, "France"), value_token(key, "japan ")
    assert TOKEN_RE.match(fr) and fr != jp
    assert f"{VIEW_PREFIX}{fr}" in texts["fr"] and f"{VIEW_PREFIX}{fr}" in texts["fr2"]
    assert f"{VIEW_PREFIX}{jp}" in texts["jp"]
    assert set(tokens.values()) == {fr, jp}


def test_tokens_are_keyed_and_fold_case_and_space():
    a, b = token_key("one-secret-0123456789"), token_key("another-secret-0123")
    assert value_token(a, "New  York") == value_token(a, "new york")
    assert value_token(a, "New York") != value_token(b, "New York")


def test_a_value_weighs_in_the_view_as_many_words_as_in_the_text():
    tok = value_token(token_key(), "F. Scott Fitzgerald")
    assert word_count("F. Scott Fitzgerald") == 3 and word_count("Paris") == 1 and word_count("-") == 1
    words = view_words(tok, 3).split()
    assert len(words) == 3 and len(set(words)) == 3 and all(w.startswith(VIEW_PREFIX + tok) for w in words)
    assert view_words(tok, None).split() == [VIEW_PREFIX + tok]
