"""DPO's correctness gate (issue 18): on a fixed batch with the tiny model, our packed DPO loss and every LoRA
gradient equal TRL's DPOTrainer (same model, data, beta; reference = the adapter disabled) within 1e-4, for
the sigmoid and IPO losses. Plus the run end to end on the CPU (metrics, lineage counts, refusals)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train

PAIRS = [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not tell you that."},
    {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Add 2 and 2."}],
     "chosen": "2 + 2 = 4.", "rejected": "5"},
    {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "No, and here is a longer refusal to vary lengths."},
]


def _records(pairs=PAIRS, split="train"):
    from trainer.data import content_sha256

    return [{"revision_id": f"00000000-0000-4000-8000-{i:012d}", "example_id": f"10000000-0000-4000-8000-{i:012d}",
             "split": split, "format": "preference", "content": c, "content_sha256": content_sha256(c)}
            for i, c in enumerate(pairs)]


def _perturb(peft_model):
    g = torch.Generator().manual_seed(3)
    for name, p in peft_model.named_parameters():
        if "lora_B.default" in name:
            # B starts at zero: the policy would equal the reference and every A gradient would be zero.
            p.data = torch.randn(p.shape, generator=g) * 0.2


def _lora_model(tiny_model, perturb=True):
    from transformers import AutoModelForCausalLM

    from trainer import hparams
    from trainer.model import attach_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(0)  # A is drawn at random: both sides must start from the same adapter
    peft_model = attach_lora(model, hparams.resolve({"lora_r": 4}))
    if perturb:
        _perturb(peft_model)
    return peft_model


def _ours(tiny_model, loss_type, beta):
    from transformers import AutoTokenizer

    from trainer import dpo
    from trainer.data import Renderer
    from trainer.engine import Engine
    from trainer.packing import build_micro_batch

    peft_model = _lora_model(tiny_model)
    engine = Engine(peft_model, backend="pedigree_sdpa", device=torch.device("cpu"))
    seqs = dpo.tokenize_pairs(Renderer(AutoTokenizer.from_pretrained(tiny_model), 512), _records())
    plan = dpo.plan(seqs, 512)
    # Two micro-batches (a pair per row, rows split): the step's mean must not depend on the split.
    mbs = [build_micro_batch(plan.rows[:1], seqs, plan.row_len, 0),
           build_micro_batch(plan.rows[1:], seqs, plan.row_len, 0)] if len(plan.rows) > 1 else \
        [build_micro_batch([r], seqs, plan.row_len, 0) for r in plan.rows]
    ref = dpo.reference_logps(engine, peft_model, mbs, len(seqs), torch.device("cpu"))
    totals = dpo.Totals(torch.device("cpu"))
    dpo.backward_step(engine, mbs, ref, dpo.token_counts(seqs, "cpu"), len(seqs), len(PAIRS), beta=beta,
                      loss_type=loss_type, totals=totals)
    stats = dpo.summary(totals.values())
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    return stats, grads


def _reference_logprobs(monkeypatch):
    """TRL computes per-token log-probs with a Triton kernel, which needs CUDA. On the CPU the same math in
    plain torch takes its place (bench.dpo.patch_trl_logprobs_for_cpu); TRL's DPO loss, batching, masking
    and reference handling, which are what this test compares, run unchanged. With a GPU the kernel runs."""
    import trl.trainer.utils as trl_utils

    from bench.dpo import patch_trl_logprobs_for_cpu

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", trl_utils._ChunkedLogProbFunction)
    patch_trl_logprobs_for_cpu()


def _trl(tiny_model, loss_type, beta, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from app.snapshots.formats import to_trl

    # Given a PEFT model, TRL's reference is a frozen copy of its adapter as it is at construction: zero-B
    # there (so the base, as ours), perturbed only afterwards.
    peft_model = _lora_model(tiny_model, perturb=False)
    data = Dataset.from_list([to_trl("preference", c) for c in PAIRS])
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], per_device_train_batch_size=len(PAIRS),
                     max_length=None, beta=beta, loss_type=[loss_type], use_cpu=True, bf16=False,
                     dataset_num_proc=None)
    trainer = DPOTrainer(model=peft_model, args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model))
    _perturb(trainer.model)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and ".default." in n}
    return float(loss), grads, trainer


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.5)])
def test_loss_and_gradients_match_trl(tiny_model, tmp_path, monkeypatch, loss_type, beta):
    pytest.importorskip("trl")
    _reference_logprobs(monkeypatch)
    stats, ours = _ours(tiny_model, loss_type, beta)
    trl_loss, theirs, trainer = _trl(tiny_model, loss_type, beta, tmp_path)
    assert abs(stats["dpo_loss"] - trl_loss) < 1e-4, (stats["dpo_loss"], trl_loss)
    assert set(ours) == set(theirs) and len(ours) > 0
    worst = max(float((ours[n] - theirs[n]).abs().max()) for n in ours)
    assert worst < 1e-4, worst
    # The A matrices get real gradients too (B was perturbed), so the check is not blind to them.
    assert any(float(g.abs().max()) > 1e-6 for n, g in ours.items() if "lora_A" in n)
    if loss_type == "sigmoid":
        m = trainer._metrics["train"]
        assert abs(stats["rewards_margin"] - m["rewards/margins"][-1]) < 1e-4
        assert abs(stats["rewards_accuracy"] - m["rewards/accuracies"][-1]) < 1e-6


def test_dpo_run_on_the_cpu(tiny_model, tmp_path):
    from trainer.run import train

    pairs = [{"prompt": f"Question {i}: pick the kind answer.", "chosen": f"Kind answer {i}.",
              "rejected": f"Rude answer number {i}!"} for i in range(12)]
    records = _records(pairs[:10]) + _records(pairs[10:], split="validation")
    for k, r in enumerate(records[10:]):
        r["revision_id"] = f"00000000-0000-4000-8000-1000000000{k:02d}"
    events = []
    spec = {"base_model": str(tiny_model), "method": "dpo",
            "hyperparameters": {"epochs": 3, "learning_rate": 5e-3, "batch_tokens": 1024, "max_seq_len": 128,
                                "lora_r": 8, "log_every": 1, "beta": 0.1, "warmup_ratio": 0.0}}
    out = train(spec, records, tmp_path / "out", events.append)
    m = out["metrics"]
    assert m["method"] == "dpo" and m["train_examples"] == 10 and m["validation_examples"] == 2
    steps = [e["data"] for e in events if e["kind"] == "metrics" and "rewards_accuracy" in e["data"]]
    assert steps and all({"rewards_margin", "rewards_chosen", "rewards_rejected", "dpo_loss"} <= set(d)
                         for d in steps)
    assert abs(m["val"]["before"]["dpo_loss"] - 0.693147) < 1e-4  # policy == reference before the first step
    assert m["val"]["after"]["dpo_loss"] < m["val"]["before"]["dpo_loss"]
    assert steps[-1]["rewards_margin"] > steps[0]["rewards_margin"]
    # One lineage row per preference revision, its tokens both answers' sequences over all epochs.
    assert len(out["examples"]) == 10 and all(e["epochs"] == 3 for e in out["examples"])
    assert all(e["tokens"] > 2 * 3 * 20 for e in out["examples"])
    saved = json.loads((tmp_path / "out" / "adapter" / "pedigree_training.json").read_text())
    assert saved["method"] == "dpo" and saved["hyperparameters"]["beta"] == 0.1


def test_dpo_refuses_other_formats_and_bad_beta(tiny_model, tmp_path):
    from trainer.errors import TrainError
    from trainer.run import train

    chat = _records()
    for r in chat:
        r["format"], r["content"] = "instruction", {"instruction": "q", "input": "", "output": "a"}
        from trainer.data import content_sha256

        r["content_sha256"] = content_sha256(r["content"])
    with pytest.raises(TrainError) as e:
        train({"base_model": str(tiny_model), "method": "dpo"}, chat, tmp_path / "o")
    assert e.value.code == "method_format_mismatch"
    for beta in (0, -1, 11):
        with pytest.raises(TrainError) as e:
            train({"base_model": str(tiny_model), "method": "dpo", "hyperparameters": {"beta": beta}}, _records(),
                  tmp_path / "o")
        assert e.value.code == "invalid_hyperparameters" and "hyperparameters.beta" in e.value.message


def test_dpo_on_qloras_base_needs_cuda(tiny_model, tmp_path):
    """dpo_adapter qlora loads the 4-bit base through the same path as method qlora: CUDA only."""
    if torch.cuda.is_available():
        pytest.skip("runs on a CPU host only")
    from trainer.errors import TrainError
    from trainer.run import train

    with pytest.raises(TrainError) as e:
        train({"base_model": str(tiny_model), "method": "dpo", "hyperparameters": {"dpo_adapter": "qlora"}},
              _records(), tmp_path / "o")
    assert e.value.code == "qlora_unavailable"
