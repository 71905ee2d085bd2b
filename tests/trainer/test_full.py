"""method "full" on the CPU with the tiny model: every weight trains (the LM head included), the artifact is
the whole model as sharded safetensors with a sha256 per file that loads back, and a model that cannot fit
is refused with out_of_memory naming the estimate."""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train


def _records(n=16):
    from tests.factories import make_records

    return make_records(n)


def test_full_fine_tuning_trains_every_weight_and_saves_the_model(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.run import train

    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    events = []
    spec = {"base_model": str(tiny_model), "method": "full",
            "hyperparameters": {"epochs": 3, "learning_rate": 1e-3, "batch_tokens": 2048, "max_seq_len": 256,
                                "log_every": 1, "warmup_ratio": 0.0}}
    out = train(spec, _records(), tmp_path / "out", events.append)
    m = out["metrics"]
    assert m["method"] == "full" and m["val_loss_after"] < m["val_loss_before"]
    assert m["trainable_parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model)
                                            .parameters())
    folder = tmp_path / "out" / "adapter"
    after = AutoModelForCausalLM.from_pretrained(folder)
    changed = {k for k, v in after.state_dict().items() if k in before and not torch.equal(v, before[k])}
    weights = {k for k in before if k.endswith("weight")}
    assert weights <= changed  # the embeddings, every layer's weights and the LM head all moved
    files = json.loads((folder / "pedigree_files.json").read_text())
    for name, sha in files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
    assert any(n.endswith(".safetensors") for n in files) and "tokenizer.json" in files
    assert any("log" == e["kind"] and "full fine-tuning" in e["message"] for e in events)
    assert len(out["examples"]) > 0  # lineage as for LoRA


def test_the_model_is_sharded_with_a_hash_per_shard(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import full

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    files = full.save(model, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "m", max_shard_size="100KB")
    shards = [n for n in files if n.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values(), strict=True))


def test_a_model_that_cannot_fit_is_refused_with_the_estimate(tiny_model, tmp_path, monkeypatch):
    from trainer.errors import TrainError
    from trainer.run import train

    monkeypatch.setenv("PEDIGREE_TRAINER_MEMORY_BYTES", str(1 << 20))
    with pytest.raises(TrainError) as e:
        train({"base_model": str(tiny_model), "method": "full"}, _records(4), tmp_path / "o")
    assert e.value.code == "out_of_memory"
    assert "estimated" in e.value.message and "GiB" in e.value.message and "parameters" in e.value.message
