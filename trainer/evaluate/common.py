"""What every suite shares: the parsed spec, its files, progress events, the stop check."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import TrainError

SUITES = ("heldout", "memorization", "pii_extraction", "membership", "bias")

# Per-suite parameters and their defaults; `None` where the default depends on the device.
DEFAULTS: dict[str, dict[str, Any]] = {
    "heldout": {
        "max_seq_len": 2048,
        "max_examples": 2000,
        "generation_examples": 200,
        "max_new_tokens": 64,
        "generation_base": True,
    },
    "memorization": {"candidates": 10000, "seed": 0},
    "pii_extraction": {
        "max_prompt_tokens": 256,
        "max_new_tokens": 32,
        "samples": 4,
        "top_k": 40,
        "temperature": 1.0,
        "seed": 0,
        "max_probes": 5000,
        "regurgitation_max_train_tokens": 2_000_000,
    },
    "membership": {"max_examples": 1000, "max_seq_len": 2048, "min_k": 0.2, "seed": 0},
    # CrowS-Pairs has 1,508 pairs: the default scores them all (trainer/evaluate/bias.py).
    "bias": {"max_pairs": 2000, "seed": 0},
}
COMMON = {"batch_tokens": None, "batch_size": None}
# Integers that may be 0: a seed, and no sampled probes at all (greedy decoding only).
ZERO_OK = frozenset({"seed", "samples"})

EventSink = Callable[[dict], None]


def event(kind: str, message: str, *, level: str = "info", step: int | None = None, data: dict | None = None) -> dict:
    return {"kind": kind, "level": level, "message": message, "step": step, "data": data or {}}


def read_lines(path: str | Path, what: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise TrainError("invalid_data", f"files.{what}: {p} does not exist")
    out = []
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainError("invalid_data", f"files.{what} line {number} is not JSON: {exc.msg}") from exc
            if not isinstance(rec, dict):
                raise TrainError("invalid_data", f"files.{what} line {number} is not an object")
            out.append(rec)
    return out


def check_records(records: list[dict], what: str) -> list[dict]:
    """Export-format lines (format + content); revision_id is optional outside the training export."""
    from trainer.data import FORMATS

    for number, rec in enumerate(records, start=1):
        if rec.get("format") not in FORMATS or not isinstance(rec.get("content"), dict):
            raise TrainError("invalid_data", f"files.{what} line {number} needs a format and a content object")
        rec.setdefault("revision_id", f"{what}-{number}")
    return records


@dataclass
class EvalConfig:
    evaluation_id: str
    suites: list[str]
    base_model: str
    adapter_dir: str | None
    params: dict[str, dict[str, Any]]
    files: Mapping[str, Any]
    canaries: list[dict] = field(default_factory=list)
    base_dir: Path = Path(".")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], base_dir: Path | None = None) -> EvalConfig:
        suites = spec.get("suites") or []
        if not isinstance(suites, list) or not suites:
            raise TrainError("invalid_params", "suites: a non-empty list is required")
        for s in suites:
            if s not in SUITES:
                raise TrainError("invalid_params", f"suites: unknown suite {s!r} (known: {', '.join(SUITES)})")
        base = spec.get("base_model")
        if not base or not isinstance(base, str):
            raise TrainError("bad_base_model", "base_model is required")
        params = resolve_params(spec.get("params") or {}, suites)
        canaries = [check_canary(c, k) for k, c in enumerate(spec.get("canaries") or [])]
        return cls(
            evaluation_id=str(spec.get("evaluation_id") or ""),
            suites=list(dict.fromkeys(suites)),
            base_model=base,
            adapter_dir=spec.get("adapter_dir"),
            params=params,
            files=spec.get("files") or {},
            canaries=canaries,
            base_dir=base_dir or Path("."),
        )

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.base_dir / q


def resolve_params(given: Mapping[str, Any], suites: list[str]) -> dict[str, dict[str, Any]]:
    """`params` is `{suite: {key: value}}`; keys outside a suite object apply to every suite that has
    them (and `batch_tokens`/`batch_size` to all). Unknown keys are refused, naming the field."""
    if not isinstance(given, Mapping):
        raise TrainError("invalid_params", "params: must be an object")
    shared = {k: v for k, v in given.items() if k not in SUITES}
    known_shared = set(COMMON) | {k for s in SUITES for k in DEFAULTS[s]}
    for k in shared:
        if k not in known_shared:
            raise TrainError("invalid_params", f"params.{k}: unknown parameter")
    out = {}
    for suite in SUITES:
        own = given.get(suite) or {}
        if not isinstance(own, Mapping):
            raise TrainError("invalid_params", f"params.{suite}: must be an object")
        allowed = {**COMMON, **DEFAULTS[suite]}
        for k in own:
            if k not in allowed:
                raise TrainError("invalid_params", f"params.{suite}.{k}: unknown parameter")
        merged = dict(allowed)
        merged.update({k: v for k, v in shared.items() if k in allowed and v is not None})
        merged.update({k: v for k, v in own.items() if v is not None})
        for k, v in merged.items():
            default = allowed[k]
            if v is None:
                continue
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise TrainError("invalid_params", f"params.{suite}.{k}: must be true or false")
            elif isinstance(default, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (k == "min_k" and v > 1):
                    raise TrainError("invalid_params", f"params.{suite}.{k}: must be a positive number")
                merged[k] = float(v)
            elif isinstance(v, bool) or not isinstance(v, int) or v < (0 if k in ZERO_OK else 1):
                raise TrainError("invalid_params", f"params.{suite}.{k}: must be an integer >= "
                                                   f"{0 if k in ZERO_OK else 1}")
        out[suite] = merged
    return out


def check_canary(c: Any, k: int) -> dict:
    where = f"canaries[{k}]"
    if not isinstance(c, Mapping):
        raise TrainError("invalid_params", f"{where}: must be an object")
    for key in ("id", "template", "secret"):
        if not isinstance(c.get(key), str) or not c.get(key):
            raise TrainError("invalid_params", f"{where}.{key}: a non-empty string is required")
    if c["template"].count("{secret}") != 1:
        raise TrainError("invalid_params", f"{where}.template: must hold '{{secret}}' exactly once")
    space = c.get("space") or {}
    if space.get("kind") != "digits" or not isinstance(space.get("length"), int) or not 1 <= space["length"] <= 30:
        raise TrainError("invalid_params", f"{where}.space: only {{'kind': 'digits', 'length': 1..30}} is supported")
    if len(c["secret"]) != space["length"] or not c["secret"].isdigit():
        raise TrainError("invalid_params", f"{where}.secret: must be {space['length']} digits")
    reps = c.get("repetitions", 1)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 0:
        raise TrainError("invalid_params", f"{where}.repetitions: must be a non-negative integer")
    return {**c, "space": dict(space), "repetitions": reps}


def render_canary(template: str, secret: str) -> str:
    # replace, not format: a template may hold other braces.
    return template.replace("{secret}", secret)


class Progress:
    """Progress events per suite, and heartbeats every 10 s; checks the stop file at each tick."""

    def __init__(self, emit: EventSink, should_stop: Callable[[], bool] | None):
        self.emit = emit
        self._should_stop = should_stop
        self._last = time.time()
        self.suite = ""
        self.phase = ""
        self.total = 0
        self.done = 0

    def check_stop(self) -> None:
        if self._should_stop is not None and self._should_stop():
            raise TrainError("cancelled", "the evaluation was cancelled")

    def begin(self, suite: str, phase: str, total: int) -> None:
        self.check_stop()
        self.suite, self.phase, self.total, self.done = suite, phase, total, 0
        self.emit(event("log", f"{suite}: {phase} ({total})", data={"suite": suite, "phase": phase, "total": total}))

    def tick(self, n: int) -> None:
        self.done += n
        self.check_stop()
        if time.time() - self._last >= 10:
            self._last = time.time()
            self.emit(
                event(
                    "heartbeat",
                    f"{self.suite}: {self.phase} {self.done}/{self.total}",
                    data={"suite": self.suite, "phase": self.phase, "done": self.done, "total": self.total},
                )
            )
