"""Loading a sharded checkpoint holds one shard in host memory at a time, not the model.

The base is built on the meta device and filled shard by shard on the target device. On a CPU the
target *is* host memory, so the bound checked is: peak resident memory during the load is at most
the loaded model plus one shard (plus the allocator's slack), where loading the whole state dict and
then building the model would need about twice the model. On a GPU the same loader leaves only the
shard in flight on the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, sys, threading, time, torch
from trainer.model import load_base

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

path, device = sys.argv[1], sys.argv[2]
if device == "cuda":
    torch.empty(1, device="cuda")  # the CUDA context's own host memory is not the loader's
peak, done = [0], threading.Event()

def poll():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)

before = anon()
t = threading.Thread(target=poll)
t.start()
tok, model = load_base(path, "lora", torch.device(device), torch.bfloat16)
done.set()
t.join()
p = next(model.parameters())
print(json.dumps({
    "before": before,
    "peak": max(peak[0], anon()),
    "device": str(p.device),
    "dtype": str(p.dtype),
    "params_bytes": sum(x.numel() * x.element_size() for x in model.parameters()),
    "checksum": float(model.model.layers[-1].mlp.down_proj.weight.float().sum()),
}))
"""


def _checkpoint(folder: Path, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.tiny import build_tokenizer

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="16MB" if hidden <= 512 else "64MB", safe_serialization=True)
    build_tokenizer().save_pretrained(folder)
    with torch.no_grad():
        checksum = float(model.model.layers[-1].mlp.down_proj.weight.float().sum())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    shards = sorted(folder.glob("model-*.safetensors"))
    return folder, model_bytes, max(s.stat().st_size for s in shards), len(shards), checksum


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("sharded"), 512, 12)


def _probe(folder: Path, device: str) -> dict:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to read peak resident memory")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), device],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_checkpoint_loads_with_one_shard_of_host_overhead(sharded):
    folder, model_bytes, shard_bytes, n_shards, checksum = sharded
    assert n_shards >= 6, "the checkpoint must be sharded for this test to mean anything"
    r = _probe(folder, "cpu")
    assert r["device"] == "cpu" and r["dtype"] == "torch.bfloat16"
    assert r["params_bytes"] == model_bytes
    assert r["checksum"] == pytest.approx(checksum, rel=1e-6), "weights are the checkpoint's, not a fresh init"
    # Anonymous memory only: the shards are memory-mapped, and their clean file pages are page cache
    # the kernel can drop at any time, not memory the loader holds.
    grown = r["peak"] - r["before"]
    slack = 48 * 2**20  # allocator arenas, the tokenizer, Python objects
    assert grown <= model_bytes + shard_bytes + slack, (grown, model_bytes, shard_bytes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the host-memory bound of a GPU target")
def test_gpu_load_does_not_stage_the_model_in_host_memory(tmp_path):
    folder, model_bytes, shard_bytes, _, checksum = _checkpoint(tmp_path, 1024, 24)  # ~0.75 GB bf16
    r = _probe(folder, "cuda")
    assert r["device"].startswith("cuda")
    assert r["checksum"] == pytest.approx(checksum, rel=1e-6)
    # Loading to the CPU and then moving the model grew host memory by the whole model.
    assert r["peak"] - r["before"] < model_bytes // 2, (r, model_bytes, shard_bytes)

