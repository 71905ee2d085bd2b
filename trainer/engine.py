"""The packed LoRA training step, shared by `trainer.run.train` and `bench.train`.

One micro-batch is one packed sequence (see trainer.packing). The decoder runs on it with an
attention backend that respects segment bounds; only the hidden states of supervised positions go
through the LM head (trainer.loss). Gradients are summed, not averaged, then scaled by the
supervised-token count of the whole optimizer step across ranks, so every supervised token weighs
the same however the step was split into micro-batches and GPUs.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch

from trainer import attention
from trainer import kernels as fused
from trainer.loss import supervised_token_losses
from trainer.packing import MicroBatch


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def lora_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fast_path(model) -> None:
    """Let autocast run LoRA matmuls in bf16 on the bf16 activations.

    PEFT casts each LoRA input to the adapter weight's dtype (fp32 here, for the optimizer), which
    costs a full fp32 copy of every activation at every adapted layer; under autocast the matmul
    would be cast back to bf16 anyway.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


class Engine:
    def __init__(
        self,
        model,
        *,
        backend: str,
        device: torch.device,
        autocast_dtype=None,
        loss_chunk: int = 4096,
        dist: DistInfo | None = None,
        compile: bool = False,
        kernels="none",
    ):
        attention.register()
        self.model = model
        self.backend = backend
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.loss_chunk = loss_chunk
        self.dist = dist or DistInfo()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        try:
            base.set_attn_implementation(backend)
        except (AttributeError, ValueError):
            # Older transformers: no setter, or it validates names against its own list.
            base.config._attn_implementation = backend
        self.decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        self.lm_weight = base.get_output_embeddings().weight
        self.params = [p for p in model.parameters() if p.requires_grad]
        if autocast_dtype is not None:
            fast_path(model)
        self.kernels = fused.resolve(kernels, device, compiled=compile)
        # Before compilation, so the compiled layers trace the Liger modules' forwards.
        fused.apply_layers(base, self.kernels)
        if compile:
            # Regional compilation: every decoder layer has the same code and shapes, so one
            # compiled graph serves them all and compile time stays that of a single layer.
            for layer in self.decoder.layers:
                layer.compile(dynamic=True)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _supervised_hidden(self, mb: MicroBatch):
        """The decoder's final hidden states at supervised positions, and their targets (under autocast)."""
        kwargs = attention.forward_kwargs(self.backend, mb)
        out = self.decoder(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False, **kwargs)
        hidden = out.last_hidden_state[0].index_select(0, mb.sup_index)
        return hidden, mb.targets[0].index_select(0, mb.sup_index)

    def token_losses(self, mb: MicroBatch) -> torch.Tensor:
        """Per-supervised-token CE of one micro-batch (fp32, [mb.supervised_tokens])."""
        with self._autocast():
            hidden, targets = self._supervised_hidden(mb)
            if self.lm_weight.requires_grad:
                return trainable_head_losses(hidden, self.lm_weight, targets, self.loss_chunk)
            return supervised_token_losses(hidden, self.lm_weight, targets, self.loss_chunk)

    def loss_sum(self, mb: MicroBatch) -> torch.Tensor:
        """Summed CE over one micro-batch's supervised tokens: what training differentiates."""
        if "flce" not in self.kernels or self.lm_weight.requires_grad:
            return self.token_losses(mb).sum()
        with self._autocast():
            hidden, targets = self._supervised_hidden(mb)
            return fused.flce_sum(hidden, self.lm_weight, targets)

    def backward_step(self, micro_batches, step_supervised: int) -> float:
        """Forward+backward over this rank's micro-batches; returns this rank's summed loss."""
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for mb in micro_batches:
            if mb.supervised_tokens == 0:
                continue
            s = self.loss_sum(mb)
            (s / step_supervised).backward()
            total += s.detach()
        if self.dist.world > 1:
            self._all_reduce_grads()
        return total

    def _all_reduce_grads(self) -> None:
        import torch.distributed as dist

        # One flat buffer: LoRA grads are small (tens of MB even at 8B), so a single all-reduce
        # beats per-tensor calls. Grads were already divided by the global supervised count: SUM.
        grads = []
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    @torch.no_grad()
    def eval_losses(self, micro_batches) -> tuple[float, int]:
        """Summed CE and supervised-token count over the given micro-batches (this rank's share)."""
        total, count = 0.0, 0
        for mb in micro_batches:
            if mb.supervised_tokens == 0:
                continue
            total += float(self.token_losses(mb).sum())
            count += mb.supervised_tokens
        return total, count


def trainable_head_losses(hidden, weight, targets, chunk: int) -> torch.Tensor:
    """Per-token CE when the LM head itself trains (full fine-tuning): plain autograd over supervised rows
    in chunks, each chunk's logits recomputed in backward (checkpointed) so only one chunk is alive."""
    from torch.utils.checkpoint import checkpoint

    def piece(h, t):
        return torch.nn.functional.cross_entropy((h @ weight.t()).float(), t, reduction="none")

    out = [checkpoint(piece, hidden[s : s + chunk], targets[s : s + chunk], use_reentrant=False)
           for s in range(0, hidden.shape[0], chunk)]
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def make_optimizer(params, *, lr: float, weight_decay: float, device: torch.device):
    # Fused AdamW: one kernel for all LoRA tensors instead of several per tensor.
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), fused=fused)


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f
