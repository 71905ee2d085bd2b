"""A tiny random-weight Llama-style model and a byte-level tokenizer, built with no hub access.

The embedded default and the tests train on this; it has to load through the same
`from_pretrained` calls as a real base model so no code path is special-cased for it.
"""

from __future__ import annotations

import json
from pathlib import Path

# ChatML: its assistant turns are easy to delimit, and real templates of the same family
# (Qwen) behave the same way under the prefix-diff masking in trainer.data.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE with no merges: every byte is one token, so any UTF-8 text round-trips
    # and the vocabulary stays small (256 bytes + specials), which keeps the tiny model tiny.
    byte_vocab = {tok: i for i, tok in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    ordered = sorted(byte_vocab, key=lambda t: ord(t[0]) if len(t) == 1 else 0)
    vocab = {tok: i for i, tok in enumerate(ordered)}
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny(
    path: str | Path, *, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
    head_scale: float = 1.0,
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if head_scale != 1.0:
        # At width 64 a random head (std 0.02) reaches logits of only about ±1.3 whatever the hidden
        # state, and LoRA leaves the head frozen: a model that must memorise (the evaluation tests)
        # needs a wider head.
        with torch.no_grad():
            model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "pedigree_tiny.json").write_text(json.dumps({"kind": "tiny-llama", "seed": seed}) + "\n")
    return path
