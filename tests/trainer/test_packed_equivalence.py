"""The correctness gate of issue 7: packing changes nothing but speed.

Per-example losses and LoRA gradients from one packed micro-batch equal those from running each
example alone, for every attention backend that runs on this machine.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train


def _setup(tiny_model, backend):
    from transformers import AutoModelForCausalLM

    from trainer import hparams
    from trainer.core import attach_lora
    from trainer.engine import Engine

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    peft_model = attach_lora(model, hparams.resolve({"lora_r": 4}))
    g = torch.Generator().manual_seed(1)
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            p.data = p.data.double()
        if "lora_B" in name:
            # B starts at zero, which would make every A gradient zero and the test blind to them.
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1
    return Engine(peft_model, backend=backend, device=torch.device("cpu"))


def _examples(tiny_model):
    from transformers import AutoTokenizer

    from tests.trainer.conftest import make_records
    from trainer.data import Renderer

    r = Renderer(AutoTokenizer.from_pretrained(tiny_model), 512)
    return [r.tokenize(i, rec) for i, rec in enumerate(make_records(9))]


def _run(engine, exs, groups, row_len=512):
    from trainer.packing import best_fit_decreasing, build_micro_batch

    total = sum(e.supervised for e in exs)
    per_example = torch.zeros(len(exs), dtype=torch.float64)
    for grp in groups:
        rows = best_fit_decreasing([len(exs[i].input_ids) for i in grp], row_len)
        mb = build_micro_batch([[grp[i] for i in row] for row in rows], exs, row_len, 0)
        losses = engine.token_losses(mb)
        (losses.sum() / total).backward()
        per_example.index_add_(0, mb.sup_example, losses.detach().double())
    grads = {n: p.grad.clone() for n, p in engine.model.named_parameters() if p.requires_grad}
    engine.model.zero_grad(set_to_none=True)
    return per_example, grads


_GPU_ONLY = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CPU backward for this backend; bench.train --check runs it on the GPU",
)


@pytest.mark.parametrize("backend", ["pedigree_sdpa", pytest.param("pedigree_flex", marks=_GPU_ONLY)])
def test_packed_equals_unpacked(tiny_model, backend):
    exs = _examples(tiny_model)
    engine = _setup(tiny_model, backend)
    alone_l, alone_g = _run(engine, exs, [[i] for i in range(len(exs))])
    packed_l, packed_g = _run(engine, exs, [list(range(len(exs)))], row_len=256)
    torch.testing.assert_close(packed_l, alone_l, rtol=1e-9, atol=1e-9)
    assert alone_g.keys() == packed_g.keys() and len(alone_g) > 0
    for name in alone_g:
        assert alone_g[name].abs().sum() > 0, name
        torch.testing.assert_close(packed_g[name], alone_g[name], rtol=1e-8, atol=1e-10, msg=name)


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
