"""The ingest pipeline as an ordered list of stages.

An example enters at the first stage; each stage processes batches of examples that sit at it, and
the runner moves them to the next one. After the last stage an example lands in `pending_review`.

This package knows no stage's domain: the list is built by the composition root (`app.wiring`), which
hands each domain's handler in. Importing pii or dedup here would close a package cycle (their
services read examples, and examples enqueue stages), so a new stage is one line in `app.wiring`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.core.errors import NotWired


@dataclass(frozen=True)
class Stage:
    name: str
    queue: str
    # Runs on examples currently at this stage (already locked by the runner), in the runner's
    # transaction. It may set an example's status (e.g. `duplicate`, `scrubbed`) or its stage to
    # None to stop it early; the runner advances the rest.
    handler: Callable[..., None]


# Filled by `install()` (app.wiring), never at import time.
STAGES: list[Stage] = []
# Called with (session, example ids, now) in the last stage's transaction, for the examples the pipeline
# finished on: their validation records (app/examples/validation.py) commit with the stamp.
ON_VALIDATED: list[Callable[..., None]] = []

# Exact duplicates found at ingest enter here directly: their text is the same as their twin's, but the
# ingest revision is raw and must be scrubbed (and vaulted) like any other before anyone reads it.
SCRUB_STAGE = "pii"


def install(stages: Sequence[Stage], on_validated: Callable[..., None] | None = None) -> None:
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or SCRUB_STAGE not in names:
        raise ValueError(f"stage names must be unique and include {SCRUB_STAGE!r}: {names}")
    STAGES[:] = stages
    ON_VALIDATED[:] = [on_validated] if on_validated else []


def _stages() -> list[Stage]:
    if not STAGES:
        raise NotWired("the pipeline has no stages: the entry point must call app.wiring.wire() first")
    return STAGES


def stage_names() -> list[str]:
    return [s.name for s in _stages()]


def pii_pending_stages() -> tuple[str, ...]:
    """The stages an example sits at before it has been through the scrub: its current text may be raw."""
    names = stage_names()
    return tuple(names[: names.index(SCRUB_STAGE) + 1])


def get_stage(name: str) -> Stage:
    for s in _stages():
        if s.name == name:
            return s
    raise KeyError(name)


def next_stage(name: str | None) -> str | None:
    names = stage_names()
    if name is None:
        return names[0]
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None

