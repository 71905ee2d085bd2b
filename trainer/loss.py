"""LM head + cross-entropy on supervised positions only, chunked, with the gradient computed in the
forward pass so neither the [tokens × vocab] logits nor their fp32 copy is ever kept for backward.

The LM head is frozen under LoRA, so the only gradient needed is d(loss)/d(hidden), which is
(softmax − onehot) @ W per row: exact, and as cheap as the usual backward.
"""

from __future__ import annotations

import torch


class _SupervisedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if need_grad else None
        for s in range(0, n, chunk):
            h = hidden[s : s + chunk]
            t = targets[s : s + chunk]
            logits = h @ weight.t()
            if logits.dtype in (torch.bfloat16, torch.float16):
                logits = logits.float()
            lse = torch.logsumexp(logits, dim=-1)
            losses[s : s + chunk] = lse - logits.gather(1, t[:, None]).squeeze(1)
            if need_grad:
                # In place on the chunk's logits: softmax, minus one at the target.
                probs = logits.sub_(lse[:, None]).exp_()
                probs.scatter_add_(1, t[:, None], torch.full_like(lse[:, None], -1.0))
                grad[s : s + chunk] = (probs.to(hidden.dtype) @ weight).to(hidden.dtype)
            del logits
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[:, None].to(grad.dtype), None, None, None


def supervised_token_losses(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096
):
    """Per-token CE (fp32) for rows of `hidden` [N, d] against `targets` [N]; differentiable in `hidden`."""
    if weight.requires_grad:
        raise ValueError("the fused loss assumes a frozen LM head")
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    return _SupervisedCE.apply(hidden, weight.detach(), targets, chunk)
