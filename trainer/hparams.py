"""Hyperparameters: defaults, ranges, and one error naming the first bad field."""

from __future__ import annotations

from trainer.errors import TrainError

DEFAULTS: dict = {
    "epochs": 1,
    "learning_rate": 2e-4,
    # Tokens per optimizer step (row slots, padding included) and per forward pass; the second
    # bounds activation memory, the ratio is the gradient-accumulation count.
    "batch_tokens": 16384,
    "micro_batch_tokens": None,
    "max_seq_len": 2048,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "seed": 0,
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "lr_scheduler": "cosine",
    "max_steps": None,
    "attention": "auto",
    # "auto": regional torch.compile on the GPU once a run is long enough to repay the ~1 min it takes.
    "compile": "auto",
    # Liger-Kernel's fused kernels (trainer.kernels): "auto" = those that paid on an H200, when
    # liger-kernel is installed and the run is on CUDA; "liger" = all four; "none".
    "kernels": "auto",
    "gradient_checkpointing": False,
    "loss_chunk": 4096,
    "log_every": 10,
    # method dpo: the KL strength, the loss (trainer.dpo) and what is trained (a LoRA adapter, or one on
    # QLoRA's 4-bit base).
    "beta": 0.1,
    "loss_type": "sigmoid",
    "dpo_adapter": "lora",
    # method full: AdamW in fp32, or bitsandbytes' 8-bit AdamW on CUDA (trainer.full).
    "optimizer": "adamw",
}

_INT_RANGES = {
    "epochs": (1, 1000),
    "batch_tokens": (16, 1 << 24),
    "micro_batch_tokens": (16, 1 << 24),
    "max_seq_len": (8, 1 << 20),
    "lora_r": (1, 4096),
    "seed": (0, 2**32 - 1),
    "max_steps": (1, 10**9),
    "loss_chunk": (64, 1 << 20),
    "log_every": (1, 10**6),
}
_FLOAT_RANGES = {
    "learning_rate": (0.0, 1.0, False),  # (low, high, low inclusive)
    "lora_alpha": (0.0, 1e6, False),
    "lora_dropout": (0.0, 1.0, True),
    "warmup_ratio": (0.0, 1.0, True),
    "weight_decay": (0.0, 10.0, True),
    "max_grad_norm": (0.0, 1e6, True),
    "beta": (0.0, 10.0, False),
}
_CHOICES = {
    "lr_scheduler": ("cosine", "linear", "constant"),
    "attention": ("auto", "pedigree_varlen", "pedigree_flex", "pedigree_sdpa"),
    "loss_type": ("sigmoid", "ipo"),
    "dpo_adapter": ("lora", "qlora"),
    "kernels": ("auto", "liger", "none"),
}


def _bad(field: str, why: str) -> TrainError:
    return TrainError("invalid_hyperparameters", f"hyperparameters.{field}: {why}")


def resolve(given: dict | None) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        # A misspelt key silently falling back to its default is worse than a refusal.
        raise _bad(unknown[0], "unknown hyperparameter")
    hp = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    for key, (lo, hi) in _INT_RANGES.items():
        v = hp[key]
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad(key, f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise _bad(key, f"must be between {lo} and {hi}, got {v}")
    for key, (lo, hi, low_inclusive) in _FLOAT_RANGES.items():
        v = hp[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(key, f"must be a number, got {v!r}")
        if not ((lo <= v if low_inclusive else lo < v) and v <= hi) or (key == "lora_dropout" and v >= 1.0):
            raise _bad(key, f"out of range, got {v}")
        hp[key] = float(v)
    for key, choices in _CHOICES.items():
        if hp[key] not in choices:
            raise _bad(key, f"must be one of {', '.join(choices)}")
    tm = hp["target_modules"]
    if not (isinstance(tm, str) and tm) and not (
        isinstance(tm, list) and tm and all(isinstance(x, str) and x for x in tm)
    ):
        raise _bad("target_modules", "must be 'all-linear' or a non-empty list of module names")
    if hp["compile"] not in (True, False, "auto"):
        raise _bad("compile", "must be true, false or 'auto'")
    if not isinstance(hp["gradient_checkpointing"], bool):
        raise _bad("gradient_checkpointing", "must be true or false")
    if hp["micro_batch_tokens"] is None:
        hp["micro_batch_tokens"] = hp["batch_tokens"]
    return hp
