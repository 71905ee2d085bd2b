"""bench.train's HF baseline: "the largest batch that fits" must fit a whole epoch.

Under dynamic padding the batch of the longest examples is the epoch's peak memory; a batch size
that survives a few random batches but dies on that one is not a configuration a user can train
with, and picking it would flatter the baseline's speed. These tests fake the out-of-memory error
(a CPU has no memory ceiling to hit) and check which batch sizes the benchmark accepts.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from bench import train as bt


@pytest.fixture
def setup(tmp_path, monkeypatch):
    shape = bt.smoke_shape(bt.SHAPES["qwen2.5-0.5b"])
    cfg = bt.write_config("qwen2.5-0.5b", shape, tmp_path)
    # Lengths 20..79 plus one example of 200 tokens: only batches holding it are "long".
    lengths = [(10, 10 + i % 60) for i in range(119)] + [(50, 150)]
    examples = bt.synth_examples(lengths, shape["vocab_size"], 256, len(lengths), seed=0)
    seen: list[tuple[int, int]] = []
    real_lora = bt.lora_model

    def lora_with_memory_ceiling(model, seed):
        m = real_lora(model, seed)
        forward = m.forward

        def limited(*a, **kw):
            ids = kw["input_ids"]
            seen.append(tuple(ids.shape))
            # "Out of memory" only for >= 8 rows that are all long (>= 70 real tokens): the longest
            # batch of 8 or 16 hits it, a batch of 4 does not, and random batches practically never do.
            if ids.shape[0] >= 8 and int(kw["attention_mask"].sum(1).min()) >= 70:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return forward(*a, **kw)

        m.forward = limited
        return m

    monkeypatch.setattr(bt, "lora_model", lora_with_memory_ceiling)
    common = {"seconds": 0.05, "warmup": 1, "max_steps": 3, "device": torch.device("cpu"), "seed": 0, "out_dir": tmp_path}
    return cfg, examples, common, seen


def test_largest_batch_must_survive_the_longest_batch(setup):
    cfg, examples, common, seen = setup
    r = bt.run_hf_largest(cfg, examples, [16, 8, 4], **common)
    assert r["batch_size"] == 4 and r["survives_longest_batch"] is True
    assert [t["batch_size"] for t in r["tried"]] == [16, 8]
    assert all(t["error"] == "out_of_memory on the longest batch" and t["padded_len"] == 200 for t in r["tried"])
    # Each candidate's first step was the longest batch: 16 and 8 rows padded to 200 tokens.
    assert (16, 200) in seen and (8, 200) in seen and (4, 200) in seen
    assert r["steps"] >= 1 and r["tokens_per_s"] > 0


def test_fixed_batch_is_measured_and_flagged_when_it_would_not_survive(setup):
    cfg, examples, common, _ = setup
    # Random batches stay under the ceiling, so the fixed batch still gets a figure; the
    # result says the epoch would have crashed on its longest batch.
    r = bt.run_hf_batch(cfg, examples, 4, **common)
    assert r["survives_longest_batch"] is True
    r = bt.run_hf_batch(cfg, examples, 8, **common)
    assert r["survives_longest_batch"] is False
    assert "ran out of memory" in r["longest_batch_error"] and r["tokens_per_s"] > 0
