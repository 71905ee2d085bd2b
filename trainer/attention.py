"""Attention that never crosses example boundaries, plugged into transformers' AttentionInterface.

Backends, all reading the segment layout that `trainer.packing` puts in the forward kwargs:
- `pedigree_varlen`: torch.nn.attention.varlen.varlen_attn (FlashAttention over cu_seqlens; CUDA).
- `pedigree_flex`: flex_attention with a document-causal BlockMask.
- `pedigree_sdpa`: SDPA with a dense [T, T] document-causal mask. Reference and CPU fallback only:
  its mask is quadratic in the micro-batch length.
The mask-creation step in transformers is skipped for names it does not know, so no
`attention_mask` is ever built that could let examples see each other.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

BACKENDS = ("pedigree_varlen", "pedigree_flex", "pedigree_sdpa")


def _repeat_kv(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=dim)


def sdpa_doc_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kw):
    doc = kw["pedigree_doc_ids"]  # [B, T]
    t = query.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=query.device).tril()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal
    groups = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, groups, 1), _repeat_kv(value, groups, 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None], scale=scaling)
    return out.transpose(1, 2).contiguous(), None


_VARLEN = None


def _varlen_fn():
    """varlen_attn's keyword for causality moved between torch releases (is_causal → window_size)."""
    global _VARLEN
    if _VARLEN is None:
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        _VARLEN = (varlen_attn, causal, "enable_gqa" in params, "scale" in params)
    return _VARLEN


def varlen_available() -> bool:
    try:
        _varlen_fn()
    except ImportError:
        return False
    return torch.cuda.is_available()


_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def varlen_doc_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kw):
    fn, causal, has_gqa, has_scale = _varlen_fn()
    b, h = query.shape[:2]
    assert b == 1, "packed micro-batches are one sequence"
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    groups = h // k.shape[1]
    extra = dict(causal)
    if groups > 1:
        if has_gqa:
            extra["enable_gqa"] = True
        else:
            k, v = _repeat_kv(k, groups, 1), _repeat_kv(v, groups, 1)
    if has_scale and scaling is not None:
        extra["scale"] = scaling
    cu = kw["pedigree_cu_seqlens"]
    m = kw["pedigree_max_seqlen"]
    back = None
    if q.dtype not in _FLASH_DTYPES or k.dtype not in _FLASH_DTYPES or v.dtype not in _FLASH_DTYPES:
        # Full fine-tuning keeps fp32 weights under bf16 autocast: the projections come out bf16 but RoPE's
        # fp32 cos/sin promote q and k back to fp32, and autocast does not cover the flash kernel, which
        # takes only half types. Run it in the autocast dtype and hand back what the caller gave.
        low = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        back = query.dtype
        q, k, v = q.to(low), k.to(low), v.to(low)
    out = fn(q, k, v, cu, cu, m, m, **extra)
    if back is not None:
        out = out.to(back)
    return out.unsqueeze(0), None  # [1, T, H, D]


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # Uncompiled flex_attention materialises the full score matrix; compiled, it is a fused kernel.
        _FLEX = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _FLEX


def flex_block_mask(doc_ids: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    doc = doc_ids[0]
    t = doc.shape[0]

    def doc_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(doc_causal, None, None, t, t, device=doc.device)


def flex_doc_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kw):
    block_mask = kw["pedigree_block_mask"]
    groups = query.shape[1] // key.shape[1]
    out = _compiled_flex()(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous(), None


_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface

    AttentionInterface.register("pedigree_sdpa", sdpa_doc_attention)
    AttentionInterface.register("pedigree_varlen", varlen_doc_attention)
    AttentionInterface.register("pedigree_flex", flex_doc_attention)
    _REGISTERED = True


def default_backend(device: torch.device) -> str:
    if device.type == "cuda" and varlen_available():
        return "pedigree_varlen"
    if device.type == "cuda":
        return "pedigree_flex"
    return "pedigree_sdpa"


def forward_kwargs(backend: str, mb) -> dict:
    """What the chosen backend reads from the forward kwargs, computed once per micro-batch."""
    if backend == "pedigree_varlen":
        return {"pedigree_cu_seqlens": mb.cu_seqlens, "pedigree_max_seqlen": mb.max_seqlen}
    if backend == "pedigree_flex":
        return {"pedigree_block_mask": flex_block_mask(mb.doc_ids)}
    return {"pedigree_doc_ids": mb.doc_ids}
