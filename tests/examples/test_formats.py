import pytest

from app.examples.formats import FieldError, content_sha256, normalize, set_text, text_fields


def test_chat_normalises_and_hashes_stably():
    a = normalize("chat", {"messages": [{"role": "user", "content": "  Hi\r\nthere "},
                                        {"role": "assistant", "content": "Caf\u0065\u0301"}]})
    b = normalize("chat", {"messages": [{"role": "user", "content": "Hi\nthere"},
                                        {"role": "assistant", "content": "Caf\u00e9"}]})
    assert a == b
    assert content_sha256(a) == content_sha256(b)


@pytest.mark.parametrize(
    ("messages", "field", "code"),
    [
        ([{"role": "user", "content": "hi"}], "messages[0].role", "order"),  # nothing to train on
        ([{"role": "bot", "content": "hi"}], "messages[0].role", "invalid"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1].role", "order"),
        ([{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}], "messages[0].content", "empty"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "messages[1].role", "order"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}], "messages[0].content", "type"),
    ],
)
def test_chat_refusals_name_the_field(messages, field, code):
    with pytest.raises(FieldError) as e:
        normalize("chat", {"messages": messages})
    assert (e.value.field, e.value.code) == (field, code)


def test_required_fields_and_size_cap():
    with pytest.raises(FieldError) as e:
        normalize("instruction", {"instruction": "x"})
    assert e.value.field == "output" and e.value.code == "missing"
    with pytest.raises(FieldError) as e:
        normalize("completion", {"prompt": "p", "completion": "x" * 101}, max_chars=100)
    assert e.value.code == "too_long" and "100" in e.value.message
    with pytest.raises(FieldError) as e:
        normalize("preference", {"prompt": "p", "chosen": "x" * 101, "rejected": "y"}, max_chars=100)
    assert e.value.field == "chosen" and e.value.code == "too_long"


def test_text_fields_round_trip():
    c = normalize("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                        {"role": "assistant", "content": "a"}]})
    paths = [p for p, _ in text_fields("chat", c)]
    assert paths == ["messages[0].content", "messages[1].content", "messages[2].content"]
    set_text(c, "messages[1].content", "<PERSON>")
    assert c["messages"][1]["content"] == "<PERSON>"
