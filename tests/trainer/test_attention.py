"""Every attention backend equals attention computed one example at a time."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train


def _reference(q, k, v, cu, scale):
    """Plain causal softmax attention per segment, in float64."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = torch.empty_like(q, dtype=torch.float64)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[0, :, s:e].double() for x in (q, k, v))
        scores = qs @ ks.transpose(-1, -2) * scale
        n = e - s
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        out[0, :, s:e] = scores.softmax(-1) @ vs
    return out.transpose(1, 2)  # [B, T, H, D] like the backends


def _inputs(device="cpu", dtype=torch.float32):
    from trainer.packing import build_micro_batch

    class Ex:
        def __init__(self, n):
            self.input_ids, self.labels_mask = [1] * n, [True] * n

    exs = [Ex(n) for n in (7, 1, 12, 3, 20, 5)]
    mb = build_micro_batch([[0, 1, 2], [3, 4], [5]], exs, 24, 0)
    t = mb.input_ids.shape[1]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, t, 16, generator=g).to(device, dtype)
    k = torch.randn(1, 2, t, 16, generator=g).to(device, dtype)
    v = torch.randn(1, 2, t, 16, generator=g).to(device, dtype)
    return mb.to(device), q, k, v


@pytest.mark.parametrize("backend", ["pedigree_sdpa", "pedigree_flex"])
def test_cpu_backends_match_reference(backend):
    from trainer import attention

    mb, q, k, v = _inputs()
    fn = {"pedigree_sdpa": attention.sdpa_doc_attention, "pedigree_flex": attention.flex_doc_attention}[
        backend
    ]
    out, _ = fn(None, q, k, v, None, scaling=0.25, **attention.forward_kwargs(backend, mb))
    ref = _reference(q, k, v, mb.cu_seqlens, 0.25)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="varlen_attn needs CUDA (checked on the GPU by bench.train --check)"
)
def test_varlen_matches_reference():
    from trainer import attention

    mb, q, k, v = _inputs("cuda", torch.bfloat16)
    out, _ = attention.varlen_doc_attention(
        None, q, k, v, None, scaling=0.25, **attention.forward_kwargs("pedigree_varlen", mb)
    )
    ref = _reference(q.cpu(), k.cpu(), v.cpu(), mb.cu_seqlens.cpu(), 0.25)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=2e-2, atol=2e-2)


def test_a_change_in_one_example_never_reaches_another():
    from trainer import attention

    mb, q, k, v = _inputs()
    kw = attention.forward_kwargs("pedigree_sdpa", mb)
    base, _ = attention.sdpa_doc_attention(None, q, k, v, None, scaling=0.25, **kw)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 8:20] += 5.0  # the third example (positions 8..19)
    v2[:, :, 8:20] -= 3.0
    moved, _ = attention.sdpa_doc_attention(None, q, k2, v2, None, scaling=0.25, **kw)
    changed = (moved - base).abs().amax(dim=(0, 2, 3)) > 0
    assert changed[8:20].all() and not changed[:8].any() and not changed[20:].any()
