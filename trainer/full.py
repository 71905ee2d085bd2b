"""Full fine-tuning (`"method": "full"`) for models small enough to train every weight.

Stability: the weights are kept in fp32 and the forward runs under bf16 autocast on the GPU, so the fp32
weights are the master copy AdamW updates (the "bf16 compute, fp32 master" scheme without a second copy).
The LM head trains too, so its loss is the differentiable chunked form (trainer.engine) instead of the
frozen-head fused one. Optional 8-bit AdamW from bitsandbytes on CUDA (`optimizer: adamw_8bit`), gradient
checkpointing as for LoRA.

Before anything is allocated the run estimates what it needs (weights, gradients, optimizer states, the
activations of one micro-batch) against what the device has free, and refuses with `out_of_memory` naming
both figures when it cannot fit, instead of dying minutes in. `PEDIGREE_TRAINER_MEMORY_BYTES` overrides the
device budget (a host that shares its GPU, or a test).

The artifact is the whole model as sharded safetensors plus its tokenizer, with `pedigree_files.json`
listing every file's sha256 (the tarball's own sha256 is what the registry checks; the per-file list lets a
consumer verify the shards it extracts).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from trainer.errors import TrainError

GIB = 1 << 30


def estimate_bytes(model, hp, *, optimizer: str) -> dict:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    state = 2 if optimizer == "adamw_8bit" else 8  # two moments, fp32 or 8-bit
    fixed = n * (4 + 4 + state)  # fp32 weights, fp32 gradients, optimizer states
    hidden = getattr(cfg, "hidden_size", 0)
    layers = getattr(cfg, "num_hidden_layers", 1)
    vocab = getattr(cfg, "vocab_size", 0)
    tokens = hp["micro_batch_tokens"]
    # ~34 bytes per token per hidden unit per layer kept for backward in bf16 (the Megatron estimate without
    # attention scores, which the fused kernels do not keep); one layer's worth under checkpointing.
    kept = 1 if hp["gradient_checkpointing"] else layers
    activations = tokens * hidden * kept * 34 + tokens * vocab * 4 * 2  # + logits of one chunk and its grad
    return {"parameters": n, "weights_grads_optimizer": fixed, "activations": activations,
            "total": fixed + activations}


def device_budget(device) -> int | None:
    override = os.environ.get("PEDIGREE_TRAINER_MEMORY_BYTES")
    if override:
        return int(override)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.95)
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.9)
    except ImportError:
        return None


def check_fits(model, hp, device) -> dict:
    est = estimate_bytes(model, hp, optimizer=hp["optimizer"])
    budget = device_budget(device)
    if budget is not None and est["total"] > budget:
        raise TrainError(
            "out_of_memory",
            f"full fine-tuning of {est['parameters'] / 1e9:.2f}B parameters needs an estimated "
            f"{est['total'] / GIB:.1f} GiB ({est['weights_grads_optimizer'] / GIB:.1f} GiB weights, gradients and "
            f"{hp['optimizer']} states, {est['activations'] / GIB:.1f} GiB activations at micro_batch_tokens "
            f"{hp['micro_batch_tokens']}), more than the {budget / GIB:.1f} GiB available: use method lora or "
            f"qlora, or optimizer adamw_8bit, gradient_checkpointing, a smaller micro_batch_tokens",
        )
    return {**est, "budget": budget}


def prepare(model, hp):
    for p in model.parameters():
        p.data = p.data.float()
        p.requires_grad_(True)
    if hp["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def make_optimizer(params, hp, device):
    if hp["optimizer"] == "adamw_8bit":
        if device.type != "cuda":
            raise TrainError("invalid_hyperparameters", "hyperparameters.optimizer: adamw_8bit needs a CUDA GPU")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise TrainError("invalid_hyperparameters", f"hyperparameters.optimizer: adamw_8bit needs "
                                                        f"bitsandbytes ({exc})") from exc
        return bnb.optim.AdamW8bit(params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
    return torch.optim.AdamW(params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"], betas=(0.9, 0.999),
                             fused=device.type == "cuda")


def save(model, tokenizer, out: Path, *, max_shard_size: str = "2GB") -> dict[str, str]:
    """The model (bf16 shards: the fp32 master copy is a training detail) and tokenizer; sha256 per file."""
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if next(model.parameters()).is_cuda else next(model.parameters()).dtype
    model.to(dtype).save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        files[str(path.relative_to(out))] = h.hexdigest()
    (out / "pedigree_files.json").write_text(json.dumps(files, indent=2, sort_keys=True) + "\n")
    return files
