"""The base model, loaded for training (LoRA or QLoRA's 4-bit base), and its LoRA adapter."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from trainer.errors import TrainError


def dtype_kwarg(dtype) -> dict:
    """transformers renamed `torch_dtype` to `dtype` (4.56); 5.x warns on the old name."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def nf4_config():
    """QLoRA's base: NF4 4-bit weights with double quantization, bf16 compute (the QLoRA paper's and
    PEFT's recommended configuration)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def load_base(base: str, method: str, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # "org/name" may be a hub id; anything else that is not on disk is a bad path.
    hub_id = base.count("/") == 1 and not base.startswith((".", "/", "~"))
    if not hub_id and not Path(base).expanduser().exists():
        raise TrainError("bad_base_model", f"base model path {base} does not exist")
    if hub_id and Path(base).exists():
        # The API accepted it as a hub id without looking at any disk; transformers would load a
        # folder of that name under this process's working directory instead, outside every model root.
        raise TrainError("bad_base_model", f"hub id {base} is also a folder under the trainer's working "
                                           "directory; give the model's absolute path inside a model root")
    kwargs = dtype_kwarg(dtype)
    if method == "qlora":
        if not torch.cuda.is_available():
            raise TrainError(
                "qlora_unavailable", "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none is present"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise TrainError("qlora_unavailable", f"QLoRA needs bitsandbytes: {exc}") from exc
        kwargs["quantization_config"] = nf4_config()
    # Built on the meta device and filled shard by shard straight on `device` (QLoRA: each weight
    # quantised to NF4 as it arrives), so host memory holds one shard at a time, never the model: a
    # checkpoint larger than host memory still loads. Loading to the CPU and then moving the model
    # needed the whole bf16 model in host memory first.
    kwargs["device_map"] = {"": torch.device(device)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except TrainError:
        raise
    except Exception as exc:
        raise TrainError(
            "bad_base_model", f"cannot load base model {base}: {type(exc).__name__}: {exc}"
        ) from exc
    return tokenizer, model


def attach_lora(model, hp: Mapping):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=hp["lora_r"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules=hp["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise TrainError("invalid_hyperparameters", f"hyperparameters.target_modules: {exc}") from exc
    # Adapter weights in half precision would lose small updates: keep them fp32 (the optimizer's
    # master copy) and let autocast compute with them in bf16.
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype.itemsize < 4:
            p.data = p.data.float()
    return peft_model


# ---------------------------------------------------------------- random-init bases (benchmarks)


def meta_model(config, dtype):
    """The model of `config` with every parameter on the meta device (no memory); buffers (RoPE's
    inverse frequencies, a few KB) are real, on the CPU."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, **dtype_kwarg(dtype))


def _init_module(module, std: float) -> None:
    """transformers' default initialisation for the modules a decoder has: normal(0, std) matrices
    and embeddings, zero biases, unit norm weights."""
    import torch

    for name, p in module.named_parameters(recurse=False):
        if p.dim() >= 2:
            p.normal_(0.0, std)
        elif name == "bias":
            p.zero_()
        else:
            p.fill_(1.0)
    if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
        module.weight[module.padding_idx].zero_()


def _nf4_linear(linear, device):
    """`linear` (its weight already initialised on `device`) as a bitsandbytes NF4 Linear4bit, the
    module transformers puts there when it loads a checkpoint with `nf4_config()`; the bf16 weight is
    freed once quantised."""
    import bitsandbytes as bnb
    import torch

    with torch.device("meta"):
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=torch.bfloat16,
            compress_statistics=True,
            quant_type="nf4",
            quant_storage=torch.uint8,
        )
    # Params4bit quantises on its first move to a real device.
    q.weight = bnb.nn.Params4bit(
        linear.weight.data,
        requires_grad=False,
        compress_statistics=True,
        quant_type="nf4",
        quant_storage=torch.uint8,
        module=q,
    ).to(device)
    if linear.bias is not None:
        q.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    q.requires_grad_(False)
    # The caller still holds the old module: drop its bf16 weight now, or every layer's would live on.
    linear.to_empty(device="meta", recurse=False)
    return q


def materialise(model, device, seed: int, *, nf4: bool = False):
    """Random-initialise a `meta_model` one parameter-owning module at a time, straight on `device`,
    yielding `(qualified name, module)` after each. With `nf4` every linear layer but the output
    head is quantised as soon as it is initialised, so the bf16 form of at most one matrix ever
    exists. Nothing passes through host memory on a GPU target, and the whole model in bf16 is never
    allocated anywhere: a 70B QLoRA base (35 GB in NF4, 131 GiB in bf16) starts on one GPU.

    The draws depend only on `seed`, the device and the module order, so a checkpoint written from
    this on the GPU holds the same weights as `random_base` builds there."""
    import torch

    std = getattr(model.config, "initializer_range", 0.02)
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    # Tied heads share the embedding's tensor; on a meta-built model the tie is not made yet.
    tied = out_emb is not None and bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if not module._parameters or (tied and module is out_emb):
                continue
            module.to_empty(device=device, recurse=False)
            _init_module(module, std)
            if nf4 and isinstance(module, torch.nn.Linear) and module is not out_emb:
                module = _nf4_linear(module, device)
                model.set_submodule(name, module)
            yield name, module
        for module in model.modules():
            for key, buf in module._buffers.items():
                if buf is not None and buf.device != torch.device(device):
                    module._buffers[key] = buf.to(device)
    if tied:
        out_emb.weight = in_emb.weight


def random_base(config, method: str, device, dtype, seed: int = 0):
    """A random-init base of `config` for `method` (lora: `dtype` weights; qlora: NF4 linear layers,
    `dtype` embeddings, norms and head), built on the meta device and filled module by module on
    `device` (`materialise`)."""
    nf4 = method == "qlora"
    if nf4:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise TrainError("qlora_unavailable", f"QLoRA needs bitsandbytes: {exc}") from exc
    model = meta_model(config, dtype)
    for _ in materialise(model, device, seed, nf4=nf4):
        pass
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"not materialised: {left[:5]}")
    if nf4:
        # What transformers' bitsandbytes loader sets; PEFT reads it to wrap Linear4bit layers.
        model.is_loaded_in_4bit = True
    return model


def write_random_checkpoint(folder: Path, config, device, dtype, seed: int = 0, shard_bytes: int = 2**31) -> Path:
    """A random-init safetensors checkpoint of `config` (the weights `random_base(config, "lora",
    device, dtype, seed)` would hold), for trainers that only load with `from_pretrained`. Written
    module by module from `materialise`: each module is copied into the current shard and its device
    memory released, so the device holds one module and the host one shard."""
    import json

    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = meta_model(config, dtype)
    shard: dict = {}
    size = total = 0
    parts: list[tuple[Path, list[str]]] = []

    def flush():
        nonlocal shard, size
        if shard:
            tmp = folder / f"part-{len(parts):05d}.safetensors.tmp"
            save_file(shard, str(tmp), metadata={"format": "pt"})
            parts.append((tmp, list(shard)))
        shard, size = {}, 0

    for name, module in materialise(model, device, seed):
        for pname, p in module.named_parameters(recurse=False):
            t = p.detach().to("cpu", copy=True).contiguous()
            shard[f"{name}.{pname}" if name else pname] = t
            size += t.numel() * t.element_size()
            total += t.numel() * t.element_size()
        module.to_empty(device="meta", recurse=False)
        if size >= shard_bytes:
            flush()
    flush()
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    weight_map = {}
    for i, (tmp, keys) in enumerate(parts):
        final = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        tmp.replace(folder / final)
        weight_map |= dict.fromkeys(keys, final)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(folder)
    return folder
