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
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise TrainError("qlora_unavailable", f"QLoRA needs bitsandbytes: {exc}") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
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
