"""Preference imports: the four line shapes (OpenAI, TRL plain and conversational, Anthropic HH, OpenAssistant
trees), per-line errors, and the pipeline (quality, PII, dedup) over both answers. The real-data tests read
slices of the shared corpora."""

from __future__ import annotations

import gzip
import itertools
import json

import orjson
import pytest

from app.examples import parsing, preference
from app.examples.formats import FieldError, content_sha256, normalize, text_fields
from tests.factories import corpora_file, new_dataset

NDJSON = {"Content-Type": "application/x-ndjson"}
CANONICAL = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}],
             "chosen": "Paris.", "rejected": "Lyon."}


def _one(obj, shape=None):
    out = preference.expand(obj, shape)
    assert len(out) == 1
    return normalize("preference", out[0])


def test_every_shape_of_one_comparison_hashes_the_same():
    msgs = CANONICAL["prompt"]
    shapes = {
        "trl": {"prompt": msgs, "chosen": [{"role": "assistant", "content": "Paris."}],
                "rejected": [{"role": "assistant", "content": "Lyon."}]},
        "trl-implicit": {"chosen": [*msgs, {"role": "assistant", "content": "Paris."}],
                         "rejected": [*msgs, {"role": "assistant", "content": "Lyon."}]},
        "openai": {"input": {"messages": [{"role": "developer", "content": "Be brief."}, *msgs[1:]]},
                   "preferred_output": [{"role": "assistant", "content": "Paris."}],
                   "non_preferred_output": [{"role": "assistant", "content": "Lyon."}]},
        "ours": CANONICAL,
    }
    want = content_sha256(normalize("preference", CANONICAL))
    for name, obj in shapes.items():
        assert content_sha256(_one(obj)) == want, name
    # HH has no system turn; without it the same comparison as HH and as TRL plain conversational agree too.
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris.",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Lyon."}
    assert preference.detect(hh) == "hh"
    assert _one(hh) == normalize("preference", {**CANONICAL, "prompt": msgs[1:]})


def test_single_turn_prompts_are_stored_as_strings():
    c = _one({"chosen": "\n\nHuman: Why is the sky blue?\n\nAssistant: Rayleigh scattering.",
              "rejected": "\n\nHuman: Why is the sky blue?\n\nAssistant: It reflects the sea."})
    assert c == {"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "It reflects the sea."}
    assert [p for p, _ in text_fields("preference", normalize("preference", CANONICAL))] == [
        "prompt[0].content", "prompt[1].content", "prompt[2].content", "prompt[3].content", "chosen", "rejected"]


@pytest.mark.parametrize(("obj", "shape", "field", "code"), [
    # Transcripts that diverge before the last assistant turn share no prompt.
    ({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
      "rejected": "\n\nHuman: a\n\nAssistant: X\n\nHuman: c\n\nAssistant: e"}, None, "chosen", "no_shared_prompt"),
    ({"chosen": "\n\nAssistant: only an answer", "rejected": "\n\nAssistant: another"}, "hh", "chosen",
     "no_shared_prompt"),
    ({"chosen": "no turns at all", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "hh", "chosen", "invalid"),
    ({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": "a"}, None,
     "non_preferred_output", "missing"),
    ({"input": {}, "preferred_output": "a", "non_preferred_output": "b"}, None, "input.messages", "missing"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, None, "chosen", "invalid"),
    ({"prompt": {"role": "prompter", "text": "q", "replies": [{"role": "assistant", "text": "a", "rank": 0}]},
      "message_tree_id": "t"}, None, "prompt", "no_pairs"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "openai", "input", "missing"),
])
def test_shape_errors_name_the_field(obj, shape, field, code):
    with pytest.raises(FieldError) as e:
        for o in preference.expand(obj, shape):
            normalize("preference", o)
    assert (e.value.field, e.value.code) == (field, code)


def test_prompt_conversations_are_validated():
    bad = {**CANONICAL, "prompt": [*CANONICAL["prompt"][:3]]}  # ends with the assistant
    with pytest.raises(FieldError) as e:
        normalize("preference", bad)
    assert (e.value.field, e.value.code) == ("prompt[2].role", "order")


def test_identical_answers_are_stored_and_flagged():
    from app.examples.quality import check

    c = normalize("preference", {"prompt": "p", "chosen": "same", "rejected": " same"})
    assert "identical_preference" in {f["code"] for f in check("preference", c)["flags"]}


def test_oasst_trees_give_a_pair_per_two_ranked_siblings():
    tree = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": {
        "message_id": "p", "role": "prompter", "text": "Q1", "replies": [
            {"message_id": "a0", "role": "assistant", "text": "best", "rank": 0, "replies": [
                {"message_id": "p2", "role": "prompter", "text": "Q2", "replies": [
                    {"message_id": "b1", "role": "assistant", "text": "second", "rank": 1},
                    {"message_id": "b0", "role": "assistant", "text": "first", "rank": 0}]}]},
            {"message_id": "a1", "role": "assistant", "text": "middle", "rank": 1},
            {"message_id": "a2", "role": "assistant", "text": "worst", "rank": 2},
            {"message_id": "ax", "role": "assistant", "text": "gone", "rank": 3, "deleted": True},
            {"message_id": "an", "role": "assistant", "text": "unranked"}]}}
    cands = parsing.prepare_line("preference", tree, 4, parsing.Defaults(source="oasst"))
    pairs = {(c.content["chosen"], c.content["rejected"]) for c in cands}
    assert pairs == {("best", "middle"), ("best", "worst"), ("middle", "worst"), ("first", "second")}
    deep = next(c for c in cands if c.content["chosen"] == "first")
    assert deep.content["prompt"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "best"},
                                      {"role": "user", "content": "Q2"}]
    assert deep.source_ref == "t1/b0/b1" and deep.line == 4
    assert deep.metadata["chosen_rank"] == 0 and deep.metadata["tree_state"] == "ready_for_export"


def _hh_lines(n: int) -> list[bytes]:
    with gzip.open(corpora_file("preference/hh-rlhf_harmless-base_test.jsonl.gz")) as f:
        return [line.rstrip(b"\n") for line in itertools.islice(f, n)]


def test_real_hh_and_oasst_files_parse():
    """The whole shared files, parsed (not stored): HH's only refusals are its four empty final answers."""
    lines = _hh_lines(10_000)
    results = [parsing.parse_line(raw, i, "preference", parsing.Defaults()) for i, raw in enumerate(lines, 1)]
    errors = [r for r in results if isinstance(r, parsing.LineError)]
    assert len(lines) == 2312 and len(errors) == 4
    assert {(e.code, e.field) for e in errors} == {("empty", "chosen")}
    with open(corpora_file("instruct/oasst_en_100_tree.jsonl"), "rb") as f:
        trees = [parsing.parse_line(raw.rstrip(b"\n"), i, "preference", parsing.Defaults(shape="oasst"))
                 for i, raw in enumerate(f, 1)]
    assert not [t for t in trees if isinstance(t, parsing.LineError)]
    assert sum(len(t) for t in trees) == 754


def test_import_route_stores_every_shape_with_line_errors(api):
    ds = new_dataset(api, "preference")
    hh = _hh_lines(40)
    with open(corpora_file("instruct/oasst_en_100_tree.jsonl"), "rb") as f:
        tree = f.readline().rstrip(b"\n")
    lines = [
        *hh,
        tree,
        orjson.dumps({"prompt": "Plain TRL?", "chosen": "yes", "rejected": "no", "provenance": {"source_ref": "t1"}}),
        orjson.dumps({"input": {"messages": [{"role": "user", "content": "OpenAI?"}], "tools": []},
                      "preferred_output": [{"role": "assistant", "content": "yes"}],
                      "non_preferred_output": [{"role": "assistant", "content": "no"}]}),
        b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: DIFFERENT\\n\\nAssistant: c"}',
    ]
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=b"\n".join(lines) + b"\n",
                                headers=NDJSON, params={"source": "mixed"})
    assert r.status_code == 200, r.text
    body = r.json()
    tree_pairs = len(parsing.prepare_line("preference", orjson.loads(tree), 1, parsing.Defaults()))
    assert body["rejected"] == 1 and body["errors"][0]["line"] == len(lines)
    assert body["errors"][0]["code"] == "no_shared_prompt"
    assert body["accepted"] + body["exact_duplicates"] == len(hh) + tree_pairs + 2
    # A forced shape that a line does not have is that line's error.
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=lines[-3] + b"\n",
                                headers=NDJSON, params={"shape": "hh"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "chosen", r.text
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=b"{}\n",
                                headers=NDJSON, params={"shape": "nope"})
    assert r.status_code == 422
    items = api.as_("curator").get(f"/v1/datasets/{ds['id']}/examples", params={"source_ref": "t1"}).json()["items"]
    assert len(items) == 1


def test_pipeline_scrubs_and_flags_both_answers(api):
    ds = new_dataset(api, "preference")
    rows = [
        {"prompt": [{"role": "user", "content": "Who wrote to us?"}, {"role": "assistant", "content": "Which day?"},
                    {"role": "user", "content": "Monday, from ann.lee@example.org"}],
         "chosen": "The mail came from ann.lee@example.org.", "rejected": "Write to bob.stone@example.com instead.",
         "provenance": {"source_ref": "pii"}},
        {"prompt": "Same answers?", "chosen": "Yes.", "rejected": "Yes.", "provenance": {"source_ref": "same"}},
    ]
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples", json=rows)
    assert r.status_code == 201, r.text
    ids = {("pii", "same")[it["line"] - 1]: it["id"] for it in r.json()["items"]}
    ex = api.as_("reviewer").get(f"/v1/examples/{ids['pii']}").json()
    text = json.dumps(ex["revision"]["content"])
    assert "ann.lee@example.org" not in text and "bob.stone@example.com" not in text
    fields = {f["field_path"] for f in ex["pii_findings"]}
    assert {"prompt[2].content", "chosen", "rejected"} <= fields
    same = api.as_("reviewer").get(f"/v1/examples/{ids['same']}").json()
    assert "identical_preference" in {f["code"] for f in same["quality_flags"]}
