"""Kernel selection (trainer.kernels) and bench.train's isolation of Liger's module patches.

Liger's kernels are Triton: they run only on CUDA, where `bench.train --check` gates them
(packed-equivalence of losses and LoRA gradients with Liger's layers and fused linear CE). Here:
what a run on the CPU gets, what is refused, and that one benchmark line's patches do not leak
into the next line's model.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from trainer import hparams, kernels
from trainer.errors import TrainError

pytestmark = pytest.mark.train
CPU = torch.device("cpu")


def test_auto_is_nothing_on_the_cpu_and_none_is_nothing_anywhere():
    assert kernels.resolve("auto", CPU, compiled=False) == ()
    assert kernels.resolve("none", torch.device("cuda"), compiled=True) == ()


def test_explicit_kernels_are_refused_without_cuda_and_unknown_names_always():
    with pytest.raises(RuntimeError, match="CUDA"):
        kernels.resolve("liger", CPU, compiled=False)
    with pytest.raises(ValueError, match="unknown kernels"):
        kernels.resolve("flce,fused_adamw", CPU, compiled=False)


def test_layer_kernels_are_refused_inside_compiled_layers(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: True)
    cuda = torch.device("cuda")
    assert kernels.resolve("flce", cuda, compiled=True) == ("flce",)
    assert kernels.resolve("auto", cuda, compiled=True) == kernels.AUTO
    assert kernels.resolve("liger", cuda, compiled=False) == kernels.ALL
    with pytest.raises(ValueError, match="compiled"):
        kernels.resolve("liger", cuda, compiled=True)


def test_kernels_hyperparameter_is_validated():
    assert hparams.resolve({})["kernels"] == "auto"
    assert hparams.resolve({"kernels": "none"})["kernels"] == "none"
    with pytest.raises(TrainError, match="hyperparameters.kernels"):
        hparams.resolve({"kernels": "fast"})


def test_bench_restores_modeling_modules_after_a_patched_line():
    from transformers.models.llama import modeling_llama

    from bench.train import _ModelingSnapshot

    rope, norm, fwd = modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP.forward
    with _ModelingSnapshot():
        # What Liger's apply_liger_kernel_to_llama does to the module.
        modeling_llama.apply_rotary_pos_emb = lambda *a, **k: None
        modeling_llama.LlamaRMSNorm = type("LigerRMSNorm", (torch.nn.Module,), {})
        modeling_llama.LlamaMLP.forward = lambda self, x: x
    assert modeling_llama.apply_rotary_pos_emb is rope
    assert modeling_llama.LlamaRMSNorm is norm
    assert modeling_llama.LlamaMLP.forward is fwd
