"""Loading a sharded checkpoint holds one shard in host memory at a time, not the model.

The base is built on the meta device and filled shard by shard on the target device. On a CPU the
target *is* host memory, so the bound checked is: peak resident memory during the load is at most
the loaded model plus one shard (plus the allocator's slack), where loading the whole state dict and
then building the model would need about twice the model. On a GPU the same loader leaves only the
shard in flight on the host.
"""

from __future__ import annotations

import json
import os
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



# ---------------------------------------------------------------- random-init bases (bench.train, issue 20)

RANDOM_PROBE = r"""
import json, sys, threading, time, torch
from pathlib import Path
from transformers import LlamaConfig
from trainer.model import meta_model, random_base, write_random_checkpoint

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

what, device, out = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = LlamaConfig(**json.loads(sys.argv[4]))
if device == "cuda":
    torch.empty(1, device="cuda")
# Warm up what a first call loads (the modeling code, the RNG and quantisation kernels): that memory
# is the libraries', not the weights'.
meta_model(cfg, torch.bfloat16)
torch.empty(4096, device=device, dtype=torch.bfloat16).normal_()
if what == "qlora":
    import bitsandbytes.functional as F
    F.quantize_4bit(torch.randn(64, 64, device=device, dtype=torch.bfloat16), quant_type="nf4", compress_statistics=True)
peak, done = [0], threading.Event()

def poll():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)

before = anon()
t = threading.Thread(target=poll)
t.start()
if what == "checkpoint":
    write_random_checkpoint(Path(out), cfg, torch.device(device), torch.bfloat16, seed=0, shard_bytes=int(sys.argv[5]))
    model = None
else:
    model = random_base(cfg, what, torch.device(device), torch.bfloat16, seed=0)
done.set()
t.join()
r = {"before": before, "peak": max(peak[0], anon())}
if model is not None:
    r["params_bytes"] = sum(x.numel() * x.element_size() for x in model.parameters())
    r["devices"] = sorted({str(x.device) for x in [*model.parameters(), *model.buffers()]})
print(json.dumps(r))
"""

# 32 layers of 4 MB-ish modules: the model (~190 MB in bf16) is far larger than a shard or a module.
WIDE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 32, "num_attention_heads": 8,
        "num_key_value_heads": 8, "vocab_size": 8000, "tie_word_embeddings": False}


def _llama_bytes(c: dict) -> tuple[int, int]:
    """bf16 bytes of the whole model and of its largest single module."""
    d, f, v, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    layer = 4 * d * d + 3 * d * f + 2 * d
    return 2 * (L * layer + 2 * v * d + d), 2 * max(v * d, d * f)


def _random_probe(what: str, device: str, out: Path, shape: dict, *extra) -> dict:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to read peak resident memory")
    # Every allocation over 64 KB gets its own mapping, returned to the kernel when freed: resident
    # memory then tracks what the process holds, not the free heap glibc keeps for reuse (by default
    # the weights of a small layer, freed, stay resident as heap).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, "-c", RANDOM_PROBE, what, device, str(out), json.dumps(shape), *map(str, extra)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True, env=env,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_random_base_is_fully_initialised_and_equals_its_checkpoint(tmp_path):
    """random_base fills every parameter and buffer (RoPE's too) with transformers' default init, and
    write_random_checkpoint writes those same weights as a sharded checkpoint from_pretrained loads
    without a missing or unexpected key; a tied head stays tied."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainer.model import random_base, write_random_checkpoint

    for tied in (False, True):
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=512, tie_word_embeddings=tied)
        model = random_base(cfg, "lora", torch.device("cpu"), torch.float32, seed=5)
        reference = AutoModelForCausalLM.from_config(cfg)
        assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
        assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
        q = model.model.layers[2].self_attn.q_proj.weight
        assert float(q.detach().std()) == pytest.approx(cfg.initializer_range, rel=0.1)
        assert torch.equal(model.model.norm.weight, torch.ones(64))
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        folder = write_random_checkpoint(tmp_path / f"ck{tied}", cfg, torch.device("cpu"), torch.float32, seed=5,
                                         shard_bytes=64 * 1024)
        assert len(list(folder.glob("model-*.safetensors"))) >= 3
        loaded, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        a, b = model.state_dict(), loaded.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        ids = torch.randint(0, 512, (1, 24))
        assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_random_checkpoint_writer_holds_one_shard_not_the_model(tmp_path):
    """The checkpoint writer (the peers' base in bench.train) initialises one module at a time and
    keeps only the current shard in host memory: its growth is bounded by a shard (plus its serialised
    copy) and one module, far under the model."""
    model_bytes, module_bytes = _llama_bytes(WIDE)
    shard = 16 * 2**20
    r = _random_probe("checkpoint", "cpu", tmp_path / "ck", WIDE, shard)
    grown = r["peak"] - r["before"]
    bound = 2 * shard + 2 * module_bytes + 40 * 2**20
    assert bound < model_bytes * 0.6, "the model must dwarf the bound for this test to mean anything"
    assert grown <= bound, (grown, bound, model_bytes)
    assert sum(f.stat().st_size for f in (tmp_path / "ck").glob("model-*.safetensors")) >= model_bytes


def test_random_base_nf4_never_materialises_the_bf16_model(tmp_path):
    """QLoRA's random base quantises each linear layer as it is initialised: host memory (the target
    here) grows by the NF4 model plus one bf16 matrix, never by the bf16 model."""
    pytest.importorskip("bitsandbytes")
    model_bytes, module_bytes = _llama_bytes(WIDE)
    r = _random_probe("qlora", "cpu", tmp_path, WIDE)
    assert r["devices"] == ["cpu"]
    grown = r["peak"] - r["before"]
    # The NF4 model: packed 4-bit linears plus bf16 embeddings, head and norms (and quant state).
    bound = r["params_bytes"] + 2 * module_bytes + 40 * 2**20
    assert bound < model_bytes * 0.75, (bound, model_bytes)
    assert grown <= bound, (grown, bound, model_bytes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the host-memory bound of a GPU target")
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_random_base_on_the_gpu_leaves_host_memory_flat(tmp_path, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    model_bytes, module_bytes = _llama_bytes(WIDE)
    r = _random_probe(method, "cuda", tmp_path, WIDE)
    assert all(d.startswith("cuda") for d in r["devices"]), r["devices"]
    assert r["peak"] - r["before"] < module_bytes + 64 * 2**20, (r, model_bytes)
