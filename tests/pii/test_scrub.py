from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.pii.schemas import CustomPattern, CustomRecognizer, DenyList, OperatorSpec, PiiPolicy
from app.pii.scrub import ScrubInput, apply_spans, free_text_fields, get_path, guess_language, scrub_examples

KEY = b"test-hash-key-0123456789abcdef01"

CHAT = {
    "messages": [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Hi, I'm John Smith. Email me at john.smith@acme.io or call 212-555-0187."},
        {"role": "assistant", "content": "Thanks John Smith, I will write to john.smith@acme.io today."},
    ]
}


def scrub(engine, content, policy=None, key="ex-1"):
    [res] = scrub_examples(engine, [ScrubInput(content, key)], policy or PiiPolicy(), hash_key=KEY)
    return res


def test_every_turn_is_scrubbed_and_the_structure_kept(engine):
    res = scrub(engine, CHAT)
    msgs = res.content["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == CHAT["messages"][0]["content"]
    assert msgs[1]["content"] == "Hi, I'm <PERSON>. Email me at <EMAIL_ADDRESS> or call <PHONE_NUMBER>."
    assert msgs[2]["content"] == "Thanks <PERSON>, I will write to <EMAIL_ADDRESS> today."
    assert CHAT["messages"][1]["content"].startswith("Hi, I'm John")  # input untouched


def test_findings_point_at_the_raw_and_the_scrubbed_span(engine):
    res = scrub(engine, CHAT)
    for f in res.findings:
        raw = get_path(CHAT, f.field_path)
        scrubbed = get_path(res.content, f.field_path)
        assert scrubbed[f.scrubbed_start : f.scrubbed_end] == f"<{f.entity_type}>"
        assert raw[f.start : f.end] in {"John Smith", "john.smith@acme.io", "212-555-0187"}
        assert f.engine.startswith("presidio-analyzer==") and f.model == "en_core_web_md==3.8.0"
        assert f.operator == "placeholder" and f.recognizer and 0 < f.score <= 1
    # Findings carry no raw value.
    assert "John" not in repr([f.to_dict() for f in res.findings])


@pytest.mark.parametrize(
    "content, paths",
    [
        ({"instruction": "Email ann@example.org", "input": "", "output": "Done, ann@example.org"},
         {"instruction", "output"}),
        ({"prompt": "Call 212-555-0187", "completion": "Calling 212-555-0187"}, {"prompt", "completion"}),
        ({"prompt": "Who is ann@example.org?", "chosen": "ann@example.org is a user",
          "rejected": [{"role": "assistant", "content": "Ask ann@example.org"}]},
         {"prompt", "chosen", "rejected[0].content"}),
    ],
)
def test_all_formats(engine, content, paths):
    res = scrub(engine, content)
    assert {f.field_path for f in res.findings} == paths
    assert "ann@example.org" not in repr(res.content) and "212-555-0187" not in repr(res.content)
    assert set(res.content) == set(content)


def test_free_text_fields_paths():
    assert [p for p, _ in free_text_fields(CHAT)] == [f"messages[{i}].content" for i in range(3)]


def test_surrogates_are_consistent_within_an_example_and_deterministic(engine):
    policy = PiiPolicy(default_operator=OperatorSpec(type="surrogate"))
    a = scrub(engine, CHAT, policy)
    b = scrub(engine, CHAT, policy)
    assert a.content == b.content  # redelivery gives the same revision content
    first = get_path(a.content, "messages[1].content")
    second = get_path(a.content, "messages[2].content")
    name = first[a.findings[0].scrubbed_start : a.findings[0].scrubbed_end]
    assert name and name != "John Smith" and name in second
    email = [f for f in a.findings if f.entity_type == "EMAIL_ADDRESS"]
    fakes = {get_path(a.content, f.field_path)[f.scrubbed_start : f.scrubbed_end] for f in email}
    assert len(fakes) == 1 and "@" in fakes.pop()
    other = scrub(engine, CHAT, policy, key="ex-2")
    assert other.content != a.content


def test_hash_is_keyed_and_equal_values_hash_equally(engine):
    policy = PiiPolicy(operators={"EMAIL_ADDRESS": OperatorSpec(type="hash")})
    res = scrub(engine, CHAT, policy)
    hashed = {get_path(res.content, f.field_path)[f.scrubbed_start : f.scrubbed_end]
              for f in res.findings if f.entity_type == "EMAIL_ADDRESS"}
    assert len(hashed) == 1 and hashed.pop().startswith("<EMAIL_ADDRESS:")
    [other_key] = scrub_examples(engine, [ScrubInput(CHAT, "ex-1")], policy, hash_key=b"x" * 32)
    assert other_key.content != res.content


def test_mask_and_redact(engine):
    policy = PiiPolicy(operators={"CREDIT_CARD": OperatorSpec(type="mask", keep_last=4),
                                  "EMAIL_ADDRESS": OperatorSpec(type="redact")})
    res = scrub(engine, {"prompt": "card 4111 1111 1111 1111, mail a@b.org", "completion": "ok"}, policy)
    assert res.content["prompt"] == "card ***************1111, mail "


def test_allow_list_deny_list_and_custom_regex(engine):
    policy = PiiPolicy(
        allow_list=["Support@Pedigree.dev"],
        deny_lists=[DenyList(entity_type="PROJECT", values=["Bluebird"])],
        custom_recognizers=[CustomRecognizer(name="customer_id", entity_type="CUSTOMER_ID",
                                             patterns=[CustomPattern(regex=r"\bCUST-\d{6}\b", score=0.9)])],
    )
    assert {"PROJECT", "CUSTOMER_ID"} <= set(policy.entities)
    res = scrub(engine, {"prompt": "Customer CUST-123456 asked support@pedigree.dev about Bluebird.",
                         "completion": "ok"}, policy)
    assert res.content["prompt"] == "Customer <CUSTOMER_ID> asked support@pedigree.dev about <PROJECT>."


def test_bad_policies_are_refused():
    with pytest.raises(ValidationError):
        PiiPolicy(entities=["NOT_A_TYPE"])
    with pytest.raises(ValidationError):
        CustomRecognizer(name="x", entity_type="X_ID", patterns=[CustomPattern(regex="(unclosed")])
    with pytest.raises(ValidationError):
        PiiPolicy(operators={"URL": OperatorSpec()})  # URL is not scrubbed by the default policy


def test_oversize_text_is_flagged_and_scrubbed_to_the_end(engine):
    filler = "The weather report said it would rain again tomorrow. " * 200  # ~11,000 chars
    text = f"{filler} contact eve@example.org {filler} and finally mallory@example.org"
    res = scrub(engine, {"prompt": text, "completion": ""}, PiiPolicy(max_chars=2000))
    assert res.flags["oversize"] == {"prompt": len(text)}
    assert res.content["prompt"].endswith("and finally <EMAIL_ADDRESS>")
    assert res.content["prompt"].count("<EMAIL_ADDRESS>") == 2 and "@" not in res.content["prompt"]
    assert res.content["prompt"].startswith(filler)


def test_empty_fields_and_non_english(engine):
    res = scrub(engine, {"instruction": "", "input": "   ",
                         "output": "Bonjour, je m'appelle Jean et mon courriel est jean@exemple.fr, merci beaucoup."})
    assert res.content["instruction"] == "" and res.content["input"] == "   "
    assert res.flags["languages"] == {"output": "non_en"}
    assert "jean@exemple.fr" not in res.content["output"]
    assert guess_language("The cat sat on the mat and it was happy with the sun") == "en"
    assert guess_language("short") is None


def test_identical_texts_across_a_batch_are_analyzed_once(engine, monkeypatch):
    seen: list[int] = []
    original = engine.analyze_batch

    def counting(texts, policy):
        seen.append(len(texts))
        return original(texts, policy)

    monkeypatch.setattr(engine, "analyze_batch", counting)
    items = [ScrubInput({"prompt": "Ask ann@example.org", "completion": f"reply {i}"}, str(i)) for i in range(5)]
    results = scrub_examples(engine, items, PiiPolicy(), hash_key=KEY)
    assert seen == [6]  # 1 shared prompt + 5 distinct completions
    assert all(r.content["prompt"] == "Ask <EMAIL_ADDRESS>" for r in results)


def test_restoring_a_false_positive(engine):
    res = scrub(engine, CHAT)
    path = "messages[1].content"
    field = [f for f in res.findings if f.field_path == path]
    person = next(i for i, f in enumerate(field) if f.entity_type == "PERSON")
    restored = apply_spans(get_path(res.content, path), get_path(CHAT, path), field, {person})
    assert restored == "Hi, I'm John Smith. Email me at <EMAIL_ADDRESS> or call <PHONE_NUMBER>."
