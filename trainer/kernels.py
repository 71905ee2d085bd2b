"""Liger-Kernel's fused kernels on the packed path (CUDA only: they are Triton kernels).

Kernels, by name:
- `rms_norm`, `swiglu`, `rope`: Liger's RMSNorm, SiLU·mul and rotary embedding, bound onto the
  model's own modules (and, for RoPE, the modeling module's `apply_rotary_pos_emb`, which is the only
  place transformers looks it up). The LoRA-wrapped projections inside the MLP are left as they are.
- `flce`: Liger's fused linear cross-entropy for the training loss: the LM head and CE run in chunks
  with the gradient computed in the forward pass, and the softmax/gradient in one Triton pass over
  bf16 logits instead of several over an fp32 copy (trainer.loss). It is fed the supervised rows only,
  so what is learned and what is counted is unchanged; per-token losses (validation, the gates) still
  come from trainer.loss.

`resolve("auto", device, compiled=...)` is what a run gets when it names none: the kernels that paid
on an H200 (AUTO below), when Liger is installed and the device is CUDA.
"""

from __future__ import annotations

import importlib

import torch

ALL = ("rms_norm", "swiglu", "rope", "flce")
LAYER = ("rms_norm", "swiglu", "rope")
# Measured on one H200 at the Qwen2.5-0.5B shape (bench.train, docs/trainer.md "Fused kernels"):
# Liger's fused linear CE under the compiled layers gave 143.7k tok/s against 134.5k with
# trainer.loss, and 34.7 GiB peak against 40.3. Liger's layer kernels do not trace inside
# torch.compile (torch 2.11: inductor hands the RMSNorm kernel its eps as a Python float), and under
# compilation inductor fuses that element-wise work itself; eager they were checked for correctness
# only, not timed, so "auto" does not pick them.
AUTO = ("flce",)


def available() -> bool:
    try:
        importlib.import_module("liger_kernel")
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve(spec, device: torch.device, *, compiled: bool) -> tuple[str, ...]:
    """A kernel spec ("auto", "none", "liger", or an iterable of names) as a tuple of names."""
    if spec in (None, "none", False, ()):
        return ()
    if spec == "auto":
        if device.type != "cuda" or not available():
            return ()
        return AUTO
    names = ALL if spec == "liger" else tuple(spec.split(",") if isinstance(spec, str) else spec)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ValueError(f"unknown kernels {unknown}; known: {', '.join(ALL)}")
    if names and (device.type != "cuda" or not available()):
        raise RuntimeError("Liger kernels need CUDA and the liger-kernel package")
    if compiled and any(n in LAYER for n in names):
        raise ValueError("Liger's layer kernels (rms_norm, swiglu, rope) do not run inside compiled layers")
    return names


def apply_layers(base_model, names) -> None:
    """Bind Liger's RMSNorm / SwiGLU / RoPE onto an existing model's modules."""
    layer = {k: k in names for k in ("rms_norm", "swiglu", "rope")}
    if not any(layer.values()):
        return
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = base_model.config.model_type
    fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if fn is None:
        raise RuntimeError(f"Liger has no kernels for model type {model_type}")
    fn(model=base_model, cross_entropy=False, fused_linear_cross_entropy=False, **layer)


def flce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed CE of `hidden` [N, d] against `targets` [N] through the frozen head `weight` [V, d]."""
    from liger_kernel.ops import LigerFusedLinearCrossEntropyFunction

    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    # Positional: (input, weight, target, bias, ce_weight, ignore_index, lse_square_scale,
    # label_smoothing, reduction). Every row is supervised, so nothing is ignored.
    out = LigerFusedLinearCrossEntropyFunction.apply(
        hidden, weight.detach(), targets, None, None, -100, 0.0, 0.0, "sum"
    )
    return out[0] if isinstance(out, tuple) else out
