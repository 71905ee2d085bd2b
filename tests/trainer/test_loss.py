"""The chunked supervised-only CE equals plain cross-entropy, value and gradient."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train


def test_matches_cross_entropy_in_value_and_gradient():
    from trainer.loss import supervised_token_losses

    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64)
    t = torch.randint(0, 50, (37,), generator=g)
    weights = torch.rand(37, generator=g, dtype=torch.float64)
    ours = supervised_token_losses(h, w, t, chunk=8)
    (ours.double() * weights).sum().backward()
    g_ours = h.grad.clone()
    h.grad = None
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="none")
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_ours, h.grad, rtol=1e-10, atol=1e-10)


def test_refuses_a_trainable_head():
    from trainer.loss import supervised_token_losses

    with pytest.raises(ValueError):
        supervised_token_losses(
            torch.randn(2, 4), torch.randn(5, 4, requires_grad=True), torch.tensor([0, 1])
        )
