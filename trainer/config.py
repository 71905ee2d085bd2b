"""RunConfig: the spec a run is given (spec.json on the command line, built by the worker from the run),
parsed and validated once, before any data is read or any model loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trainer import hparams
from trainer.errors import TrainError

METHODS = ("lora", "qlora", "dpo", "full")


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class RunConfig:
    base_model: str
    method: str
    # hparams.resolve()'s output: every key present, defaults filled, ranges checked.
    hp: Mapping[str, Any]
    expected_manifest_sha256: str | None = None
    model_name: str | None = None
    # Lineage facts handed over by the service for the adapter's README.md.
    model_card: Mapping[str, Any] = field(default_factory=_frozen)
    # [{"id", "template", "secret", "space", "repetitions"}], checked; inserted into the training stream.
    canaries: tuple = ()

    @property
    def adapter(self) -> str:
        """What is trained: a LoRA adapter on a bf16/fp32 base, or on QLoRA's 4-bit base."""
        if self.method == "dpo":
            return self.hp["dpo_adapter"]
        if self.method == "full":
            return "lora"  # loaded like a LoRA base (unquantised); trainer.full trains every weight
        return self.method

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RunConfig:
        hp = hparams.resolve(spec.get("hyperparameters"))
        method = spec.get("method", "lora")
        if method not in METHODS:
            raise TrainError("invalid_hyperparameters", f"method: must be one of {', '.join(METHODS)}, got {method!r}")
        if spec.get("canaries") and method != "lora":
            raise TrainError("invalid_hyperparameters", "canaries: supported for method lora only")
        base = spec.get("base_model")
        if not base or not isinstance(base, str):
            raise TrainError("bad_base_model", "base_model is required")
        return cls(
            base_model=base,
            method=method,
            hp=_frozen(hp),
            expected_manifest_sha256=spec.get("expected_manifest_sha256"),
            model_name=spec.get("model_name"),
            model_card=_frozen(spec.get("model_card")),
            canaries=_canaries(spec.get("canaries")),
        )


def _canaries(given) -> tuple:
    from trainer.evaluate.common import check_canary

    if given is None:
        return ()
    if not isinstance(given, list):
        raise TrainError("invalid_hyperparameters", "canaries: must be a list")
    try:
        return tuple(check_canary(c, k) for k, c in enumerate(given))
    except TrainError as exc:
        # A training run reports spec problems under the training codes.
        raise TrainError("invalid_hyperparameters", exc.message) from exc
