"""Preference exports: openai-dpo, trl and Parquet (plain and conversational prompts), the refusal on other
formats, and the TRL export read by TRL's own DPOTrainer data path with the tiny model."""

from __future__ import annotations

import io
import json

import pytest

from tests.factories import freeze, ingest, new_dataset, set_status, stdlib_content_sha256

CONV = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour."}]
ROWS = [
    {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "No."},
    {"prompt": CONV, "chosen": "Blue.", "rejected": "I will not."},
    {"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "5"},
]


@pytest.fixture
def pref_snapshot(api):
    ds = new_dataset(api, "preference")
    ids = ingest(api, ds, [{**x, "provenance": {"source": "s", "source_ref": f"r{i}"}} for i, x in enumerate(ROWS)])
    set_status(ids, "approved")
    return freeze(api, ds, validation_fraction=0.0)


def _lines(api, snap, fmt):
    r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": fmt})
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.content.splitlines() if x.strip()]


def test_openai_dpo_and_trl_exports(api, pref_snapshot):
    dpo = {x["preferred_output"][0]["content"]: x for x in _lines(api, pref_snapshot, "openai-dpo")}
    assert set(dpo["Blue."]) == {"input", "preferred_output", "non_preferred_output"}
    assert dpo["Blue."]["input"]["messages"] == CONV
    assert dpo["Yes."]["input"]["messages"] == [{"role": "user", "content": "Say yes."}]
    assert dpo["Blue."]["non_preferred_output"] == [{"role": "assistant", "content": "I will not."}]
    trl = {x["chosen"][0]["content"]: x for x in _lines(api, pref_snapshot, "trl")}
    assert len(trl) == 3 and all(isinstance(x["prompt"], list) for x in trl.values())
    assert trl["Blue."] == {"prompt": CONV, "chosen": [{"role": "assistant", "content": "Blue."}],
                            "rejected": [{"role": "assistant", "content": "I will not."}]}
    alpaca = {x["chosen"]: x for x in _lines(api, pref_snapshot, "alpaca")}
    assert alpaca["Blue."]["system"] == "Be kind." and alpaca["Blue."]["instruction"] == "Name a colour."
    assert alpaca["Blue."]["history"] == [["Hi", "Hello! How can I help?"]]
    comp = {json.dumps(x["completion"]): x for x in _lines(api, pref_snapshot, "completion")}
    assert len(comp) == 3


def test_parquet_round_trips_conversational_prompts(api, pref_snapshot):
    import pandas as pd

    from app.snapshots.export import content_from_parquet_row

    r = api.as_("trainer").get(f"/v1/snapshots/{pref_snapshot['id']}/export", params={"format": "parquet"})
    assert r.status_code == 200 and r.content[:4] == b"PAR1"
    df = pd.read_parquet(io.BytesIO(r.content))
    assert {"prompt", "prompt_messages", "chosen", "rejected"} <= set(df.columns) and len(df) == 3
    for row in df.to_dict("records"):
        assert stdlib_content_sha256(content_from_parquet_row("preference", row)) == row["content_sha256"]


def test_preference_exports_refuse_other_formats(api):
    ds = new_dataset(api, "instruction")
    ids = ingest(api, ds, [{"instruction": "q", "output": "a", "provenance": {"source": "s", "source_ref": "x"}}])
    set_status(ids, "approved")
    snap = freeze(api, ds)
    for fmt in ("openai-dpo", "trl"):
        r = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": fmt})
        assert r.status_code == 422 and r.json()["error"]["code"] == "format_mismatch", r.text
        assert r.json()["error"]["details"][0]["field"] == "format"


def test_trl_export_goes_through_dpo_trainers_data_path(api, pref_snapshot, tmp_path):
    """TRL reads our file with `datasets`, applies the chat template and tokenizes prompt, chosen and
    rejected; its collator then builds the batch it would train on."""
    pytest.importorskip("trl")
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trainer.tiny import make_tiny

    r = api.as_("trainer").get(f"/v1/snapshots/{pref_snapshot['id']}/export", params={"format": "trl"})
    path = tmp_path / "trl.jsonl"
    path.write_bytes(r.content)
    model_dir = make_tiny(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = load_dataset("json", data_files=str(path), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "out"), report_to=[], per_device_train_batch_size=3,
                     max_length=512, use_cpu=True, dataset_num_proc=None, bf16=False)
    t = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    ds = t.train_dataset
    by_chosen = {tok.decode(row["chosen_ids"]): row for row in ds}
    blue = next(row for text, row in by_chosen.items() if text.startswith("Blue."))
    prompt = tok.decode(blue["prompt_ids"])
    assert "Be kind." in prompt and "Name a colour." in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert tok.decode(blue["rejected_ids"]).startswith("I will not.")
    batch = next(iter(t.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 6  # chosen and rejected rows of every pair
