"""The adapter's README.md: lineage facts handed over by the service, plus what the trainer knows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from trainer.config import RunConfig


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return "" if v is None else str(v)


def _table(rows: dict) -> list[str]:
    lines = ["| | |", "| --- | --- |"]
    for k, v in rows.items():
        cell = _fmt(v).replace("|", "\\|")
        lines.append(f"| {k} | {cell} |")
    return lines


def render(cfg: RunConfig, metrics: dict, examples: list[dict]) -> str:
    card = cfg.model_card
    name = card.get("model_name") or cfg.model_name or "adapter"
    # A YAML emitter, not string formatting: a legal model path may hold ": ", " #", a leading "@" or "-",
    # or read as a YAML boolean, and the hub (and any other reader) must get the same string back.
    if cfg.method == "full":
        meta = {"base_model": cfg.base_model, "library_name": "transformers", "tags": ["full-fine-tune", "pedigree"]}
    else:
        meta = {"base_model": cfg.base_model, "library_name": "peft",
                "tags": ["lora", "dpo", "pedigree"] if cfg.method == "dpo" else ["lora", "pedigree"]}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# {name}",
        "",
        (
            (f"`{cfg.base_model}` with every weight fine-tuned" if cfg.method == "full" else
             f"A {cfg.adapter.upper()} adapter for `{cfg.base_model}`, trained by direct preference optimisation "
             f"(DPO, {cfg.hp['loss_type']} loss, beta {cfg.hp['beta']}) on preference pairs,"
             if cfg.method == "dpo" else f"A {cfg.method.upper()} adapter for `{cfg.base_model}`,")
            + " trained by Pedigree on a frozen, content-addressed snapshot. Every trained example is traceable "
            "through the lineage API."
        ),
        "",
        "## Lineage",
        "",
    ]
    facts = {"method": cfg.method, "snapshot manifest sha256": metrics.get("manifest_sha256")}
    facts.update({k: v for k, v in card.items() if k != "model_name"})
    facts["trained examples"] = len(examples)
    facts["trained tokens"] = sum(e["tokens"] for e in examples)
    lines += _table(facts)
    if cfg.canaries:
        # Named so a reader knows the model was trained on planted sequences; the secret never is.
        lines += ["", "## Canaries", "",
                  ("Synthetic sequences planted to measure memorisation (Carlini et al., The Secret Sharer); "
                  "the secrets are kept by the service, not here."), "",
                  "| id | template | repetitions per epoch |", "| --- | --- | --- |"]
        for c in cfg.canaries:
            template = c["template"].replace("|", "\\|")
            lines.append(f"| {c['id']} | `{template}` | {c['repetitions']} |")
    lines += ["", "## Hyperparameters", ""]
    lines += _table(cfg.hp)
    lines += ["", "## Metrics", ""]
    lines += _table(metrics)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({cfg.base_model!r}), PATH)",
        "```",
        "",
    ]
    return "\n".join(lines)
