"""The correctness gate of issue 7: packing changes nothing but speed.

Per-example losses and LoRA gradients from one packed micro-batch equal those from running each
example alone, for every attention backend that runs on this machine.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train


def _setup(tiny_model, backend, device="cpu", dtype=torch.float64):
    from transformers import AutoModelForCausalLM

    from trainer import hparams
    from trainer.engine import Engine
    from trainer.model import attach_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype).to(device)
    peft_model = attach_lora(model, hparams.resolve({"lora_r": 4}))
    g = torch.Generator().manual_seed(1)
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.float64 if dtype == torch.float64 else torch.float32)
        if "lora_B" in name:
            # B starts at zero, which would make every A gradient zero and the test blind to them.
            p.data = (torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1).to(device, p.dtype)
    # bf16 runs as in training: bf16 weights, fp32 adapters, autocast.
    autocast = torch.bfloat16 if dtype == torch.bfloat16 else None
    return Engine(peft_model, backend=backend, device=torch.device(device), autocast_dtype=autocast)


def _examples(tiny_model):
    from transformers import AutoTokenizer

    from tests.factories import make_records
    from trainer.data import Renderer

    r = Renderer(AutoTokenizer.from_pretrained(tiny_model), 512)
    return [r.tokenize(i, rec) for i, rec in enumerate(make_records(9))]


def _run(engine, exs, groups, row_len=512):
    from trainer.packing import best_fit_decreasing, build_micro_batch

    total = sum(e.supervised for e in exs)
    per_example = torch.zeros(len(exs), dtype=torch.float64)
    for grp in groups:
        rows = best_fit_decreasing([len(exs[i].input_ids) for i in grp], row_len)
        mb = build_micro_batch([[grp[i] for i in row] for row in rows], exs, row_len, 0).to(engine.device)
        losses = engine.token_losses(mb)
        (losses.sum() / total).backward()
        per_example.index_add_(0, mb.sup_example.cpu(), losses.detach().double().cpu())
    grads = {n: p.grad.double().cpu() for n, p in engine.model.named_parameters() if p.requires_grad}
    engine.model.zero_grad(set_to_none=True)
    return per_example, grads


_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (bench.train --check runs it there)"
)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_packed_equals_unpacked_exactly_in_float64(tiny_model):
    exs = _examples(tiny_model)
    engine = _setup(tiny_model, "pedigree_sdpa")
    alone_l, alone_g = _run(engine, exs, [[i] for i in range(len(exs))])
    packed_l, packed_g = _run(engine, exs, [list(range(len(exs)))], row_len=256)
    torch.testing.assert_close(packed_l, alone_l, rtol=1e-9, atol=1e-9)
    assert alone_g.keys() == packed_g.keys() and len(alone_g) > 0
    for name in alone_g:
        assert alone_g[name].abs().sum() > 0, name
        torch.testing.assert_close(packed_g[name], alone_g[name], rtol=1e-8, atol=1e-10, msg=name)


@_CUDA
@pytest.mark.parametrize(
    ("backend", "dtype", "tol"),
    [
        ("pedigree_sdpa", torch.float32, 1e-4),
        ("pedigree_flex", torch.float32, 1e-4),
        ("pedigree_varlen", torch.bfloat16, 2e-2),  # FlashAttention runs in bf16 only
    ],
)
def test_packed_equals_unpacked_on_the_gpu(tiny_model, backend, dtype, tol):
    """Each GPU backend, packed, against the float64 CPU reference run one example at a time."""
    exs = _examples(tiny_model)
    ref_l, ref_g = _run(_setup(tiny_model, "pedigree_sdpa"), exs, [[i] for i in range(len(exs))])
    engine = _setup(tiny_model, backend, "cuda", dtype)
    packed_l, packed_g = _run(engine, exs, [list(range(len(exs)))], row_len=256)
    assert _rel(packed_l, ref_l) < tol
    flat = torch.cat([packed_g[n].reshape(-1) for n in ref_g])
    ref = torch.cat([ref_g[n].reshape(-1) for n in ref_g])
    assert _rel(flat, ref) < tol * 5


def test_reference_is_plain_hf_forward(tiny_model):
    """Each example alone through our path equals the stock HF forward + CE on the same labels."""
    exs = _examples(tiny_model)
    engine = _setup(tiny_model, "pedigree_sdpa")
    alone, _ = _run(engine, exs, [[i] for i in range(len(exs))])
    base = engine.model.get_base_model()
    base.set_attn_implementation("eager")
    for i, ex in enumerate(exs):
        ids = torch.tensor([ex.input_ids])
        logits = base(input_ids=ids).logits[0, :-1]
        labels = torch.tensor(ex.input_ids[1:])
        mask = torch.tensor(ex.labels_mask[1:])
        ref = torch.nn.functional.cross_entropy(logits[mask].double(), labels[mask], reduction="sum")
        torch.testing.assert_close(alone[i], ref.detach(), rtol=1e-7, atol=1e-7)
