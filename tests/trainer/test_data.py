"""Export verification and rendering: hashes recomputed, supervision only on answers."""

import hashlib
import json

import pytest

from tests.factories import make_records
from trainer.data import content_sha256, manifest_sha256, verify_records
from trainer.errors import TrainError


def test_content_hash_is_canonical_json():
    content = {"b": "é", "a": [1, {"z": 0, "y": None}]}
    expected = hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert content_sha256(content) == expected
    assert content_sha256({"a": [1, {"y": None, "z": 0}], "b": "é"}) == expected


def test_manifest_is_order_independent_and_split_sensitive():
    members = [("b" * 64, "train"), ("a" * 64, "validation")]
    expected = hashlib.sha256(f"{'a' * 64} validation\n{'b' * 64} train".encode()).hexdigest()
    assert manifest_sha256(members) == expected
    assert manifest_sha256(reversed(members)) == expected
    assert manifest_sha256([("b" * 64, "validation"), ("a" * 64, "validation")]) != expected


def test_verify_accepts_a_good_export_and_its_manifest():
    recs = make_records(12)
    _, manifest = verify_records(recs, None)
    out, again = verify_records(recs, manifest)
    assert again == manifest and len(out) == 12


def test_tampered_content_is_a_manifest_mismatch():
    recs = make_records(6)
    recs[3]["content"] = (
        {**recs[3]["content"], "output": "tampered"}
        if "output" in recs[3]["content"]
        else {**recs[3]["content"], "chosen": "tampered"}
    )
    with pytest.raises(TrainError) as err:
        verify_records(recs, None)
    assert err.value.code == "manifest_mismatch" and "rev-003" in err.value.message


def test_wrong_expected_manifest_is_refused():
    with pytest.raises(TrainError) as err:
        verify_records(make_records(4), "0" * 64)
    assert err.value.code == "manifest_mismatch"


def test_moving_an_example_between_splits_changes_the_manifest():
    recs = make_records(4)
    _, before = verify_records(recs, None)
    recs[1]["split"] = "validation"
    _, after = verify_records(recs, None)
    assert before != after


@pytest.mark.train
def test_only_assistant_and_completion_tokens_are_supervised(tiny_model):
    from transformers import AutoTokenizer

    from trainer.data import Renderer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    r = Renderer(tok, 4096)

    def supervised_text(fmt, content):
        ex = r.tokenize(0, {"format": fmt, "content": content, "revision_id": "r"})
        return tok.decode([t for t, m in zip(ex.input_ids, ex.labels_mask) if m])

    chat = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"},
            {"role": "assistant", "content": "A2"},
        ]
    }
    assert supervised_text("chat", chat) == "A1<|im_end|>\nA2<|im_end|>\n"
    assert (
        supervised_text("instruction", {"instruction": "I", "input": "X", "output": "O"}) == "O<|im_end|>\n"
    )
    assert supervised_text("completion", {"prompt": "P", "completion": "C"}) == "C<|eos|>"
    pref = {"prompt": "P", "chosen": "good", "rejected": "bad"}
    assert supervised_text("preference", pref) == "good<|im_end|>\n"
    conv = {**pref, "prompt": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                               {"role": "user", "content": "U2"}]}
    assert supervised_text("preference", conv) == "good<|im_end|>\n"  # the prompt's assistant turn is context


@pytest.mark.train
def test_long_examples_are_truncated_to_max_seq_len(tiny_model):
    from transformers import AutoTokenizer

    from trainer.data import Renderer

    r = Renderer(AutoTokenizer.from_pretrained(tiny_model), 32)
    ex = r.tokenize(
        0, {"format": "completion", "content": {"prompt": "p", "completion": "x" * 100}, "revision_id": "r"}
    )
    assert len(ex.input_ids) == 32 and ex.truncated
