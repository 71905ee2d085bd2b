"""The CUDA-only method paths (issue 18): DPO over a QLoRA (NF4) base and full fine-tuning with 8-bit AdamW
both come from bitsandbytes, which has no CPU kernels for them, so on a CPU host these tests skip and the
refusals are tested instead (test_dpo.py, test_full.py). On a GPU host with bitsandbytes they train the
tiny model for real and check what a user relies on: the loss falls, the metrics are there, lineage counts
every pair, and the artifact says which method and optimizer made it."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.train,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 4-bit and 8-bit AdamW need CUDA"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # Its own tiny model rather than the conftest's: the GPU host runs this file with --noconftest (it has
    # torch and bitsandbytes, not the API's database drivers that tests/conftest.py imports).
    from trainer.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


def _records(contents, split="train", fmt="preference", start=0):
    from trainer.data import content_sha256

    return [{"revision_id": f"00000000-0000-4000-8000-{start + i:012d}",
             "example_id": f"10000000-0000-4000-8000-{start + i:012d}", "split": split, "format": fmt,
             "content": c, "content_sha256": content_sha256(c)} for i, c in enumerate(contents)]


def _pairs(n):
    pairs = [{"prompt": f"Question {i}: pick the kind answer.", "chosen": f"Kind answer {i}.",
              "rejected": f"Rude answer number {i}!"} for i in range(n)]
    return _records(pairs[:-2]) + _records(pairs[-2:], split="validation", start=1000)


def test_dpo_on_a_qlora_base(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    from trainer.run import train

    events = []
    spec = {"base_model": str(tiny), "method": "dpo",
            "hyperparameters": {"dpo_adapter": "qlora", "epochs": 3, "learning_rate": 5e-3, "batch_tokens": 1024,
                                "max_seq_len": 128, "lora_r": 8, "log_every": 1, "beta": 0.1,
                                "warmup_ratio": 0.0}}
    out = train(spec, _pairs(12), tmp_path / "out", events.append)
    m = out["metrics"]
    assert m["method"] == "dpo" and m["train_examples"] == 10
    assert abs(m["val"]["before"]["dpo_loss"] - 0.693147) < 1e-3  # policy == reference before the first step
    assert m["val"]["after"]["dpo_loss"] < m["val"]["before"]["dpo_loss"]
    assert m["adapter"] == "qlora"
    assert len(out["examples"]) == 10 and all(e["epochs"] == 3 for e in out["examples"])
    saved = json.loads((tmp_path / "out" / "adapter" / "pedigree_training.json").read_text())
    assert saved["method"] == "dpo" and saved["hyperparameters"]["dpo_adapter"] == "qlora"


def test_full_fine_tuning_with_8bit_adamw(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    from trainer.run import train

    texts = [{"instruction": f"Repeat the number {i}.", "input": "", "output": f"The number is {i}, twice {2 * i}."}
             for i in range(16)]
    records = _records(texts[:14], fmt="instruction") + _records(texts[14:], split="validation", fmt="instruction",
                                                                 start=1000)

    spec = {"base_model": str(tiny), "method": "full",
            "hyperparameters": {"epochs": 3, "learning_rate": 1e-3, "batch_tokens": 2048, "max_seq_len": 256,
                                "log_every": 1, "warmup_ratio": 0.0, "optimizer": "adamw_8bit"}}
    events = []
    out = train(spec, records, tmp_path / "out", events.append)
    m = out["metrics"]
    assert m["method"] == "full" and m["val_loss_after"] < m["val_loss_before"]
    saved = json.loads((tmp_path / "out" / "adapter" / "pedigree_training.json").read_text())
    assert saved["hyperparameters"]["optimizer"] == "adamw_8bit"
