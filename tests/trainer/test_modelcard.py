"""The adapter's README.md front matter is YAML that Hugging Face's hub (and any YAML reader) parses back
to the base model the run was given, whatever characters a legal model path holds."""

import pytest
import yaml

from trainer import hparams
from trainer.config import RunConfig
from trainer.modelcard import render


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.mark.parametrize(
    "base_model",
    [
        "/data/models: v2/llama",  # ": " starts a mapping in plain YAML
        "@team/model",  # "@" is reserved and may not start a plain scalar
        "org/model #3",  # " #" starts a comment
        "'quoted'/model",
        "- list/like",
        "yes",  # a YAML 1.1 boolean unless quoted
        "line\nbreak",
        "model [draft]",
    ],
)
def test_front_matter_round_trips_the_base_model(base_model):
    cfg = RunConfig.from_spec({"base_model": base_model, "method": "lora", "model_name": "m: x"})
    card = render(cfg, {"train_loss": 1.5}, [{"tokens": 3}])
    meta = _front_matter(card)
    assert meta["base_model"] == base_model
    assert meta["library_name"] == "peft"
    assert meta["tags"] == ["lora", "pedigree"]


def test_body_still_names_the_hyperparameters():
    cfg = RunConfig.from_spec({"base_model": "org/m", "method": "qlora"})
    card = render(cfg, {}, [])
    assert "QLORA adapter for `org/m`" in card
    for key in hparams.resolve(None):
        assert f"| {key} |" in card
