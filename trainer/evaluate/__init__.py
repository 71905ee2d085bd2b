"""Evaluation of a trained adapter: `evaluate(spec, out_dir, on_event, should_stop=None) -> dict`.

Suites `heldout`, `memorization`, `pii_extraction`, `membership` (docs/trainer.md, "Evaluation").
Run as `python -m trainer evaluate` by the same supervisors as training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer.evaluate.common import SUITES, EvalConfig, EventSink, Progress, event

__all__ = ["SUITES", "evaluate"]


def evaluate(
    spec: Mapping[str, Any],
    out_dir: Path | None = None,
    on_event: EventSink = lambda e: None,
    *,
    should_stop: Callable[[], bool] | None = None,
    base_dir: Path | None = None,
) -> dict:
    """Run the spec's suites; returns `{"results": {suite: {...}}}`. Relative file paths are taken
    from `base_dir` (the spec file's folder on the command line)."""
    import torch

    from trainer.evaluate.lm import LM
    from trainer.evaluate.suites import RUNNERS

    t0 = time.time()
    cfg = EvalConfig.from_spec(spec, base_dir)
    prog = Progress(on_event, should_stop)
    torch.manual_seed(0)
    lm = LM(cfg.base_model, cfg.adapter_dir)
    on_event(event("log", f"loaded {cfg.base_model}" + (f" with adapter {cfg.adapter_dir}" if cfg.adapter_dir else "")))
    results = {}
    for suite in cfg.suites:
        t = time.time()
        try:
            results[suite] = RUNNERS[suite](lm, cfg, prog)
        except torch.OutOfMemoryError as exc:
            from trainer.errors import TrainError

            raise TrainError("out_of_memory", f"CUDA out of memory in {suite}: lower params.batch_tokens / "
                                              "params.batch_size") from exc
        results[suite]["wall_s"] = time.time() - t
        on_event(event("metrics", f"{suite} done in {time.time() - t:.1f}s", data={"suite": suite}))
    on_event(event("log", f"evaluation finished in {time.time() - t0:.1f}s"))
    return {"results": results}
