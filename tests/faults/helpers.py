"""What the fault tests check after every fault: each example through each stage exactly once, the
audit chain intact, and how long it took."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import orjson

from app.pipeline import stages


def examples_ndjson(n: int, tag: str) -> bytes:
    # Names and addresses, so the pii stage has real work (and a real model load) in every batch;
    # random words around them, so dedup finds no near copies and every example ends in review.
    rng = random.Random(tag)
    words = [w for w in WORDS.split() if w]

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    return b"\n".join(orjson.dumps({
        "instruction": f"Write to Dana Whitfield at dana.{tag}{i}@example.org about {text(14)}.",
        "output": f"Dear Dana, {text(24)}. Call +1 415 555 01{i % 100:02d} with questions.",
        "provenance": {"source_ref": f"{tag}-{i}"}}) for i in range(n))


WORDS = """apple river stone cloud forest winter summer copper silver garden engine window harbor lantern
meadow orchard pencil rocket saddle throne violin walnut yellow zephyr anchor basket candle desert
feather glacier hammer island jacket kettle ladder marble needle oyster pepper quartz ribbon shadow
tunnel umbrella valley wagon yarn zipper bridge castle dragon falcon goblet helmet iceberg jungle
kingdom lemon magnet nectar ocean parrot quiver rabbit saturn tiger unicorn velvet whistle"""


def wait_for(what: str, pred: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> float:
    """Seconds until `pred()` held; fails the test with `what` after `timeout_s`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(poll_s)
    return time.monotonic() - t0


def pipeline_done(stack, n: int) -> bool:
    [(left,)] = stack.sql("SELECT count(*) FROM examples WHERE stage IS NOT NULL")
    [(total,)] = stack.sql("SELECT count(*) FROM examples")
    return total == n and left == 0


def assert_each_stage_ran_once(stack, n: int) -> None:
    """Every example is in exactly one committed `pipeline.<stage>.done` event per stage: a batch that
    was killed rolled back with its event, and none was run a second time after it committed."""
    ids = {str(r[0]) for r in stack.sql("SELECT id FROM examples")}
    assert len(ids) == n
    for name in stages.stage_names():
        seen = Counter(e for (payload,) in stack.sql(
            "SELECT payload FROM audit_events WHERE action = %s", f"pipeline.{name}.done") for e in payload["examples"])
        assert set(seen) == ids, f"{name}: {len(ids - set(seen))} examples never ran it"
        twice = [e for e, c in seen.items() if c > 1]
        assert not twice, f"{name} ran twice for {len(twice)} examples"
    statuses = dict(stack.sql("SELECT status, count(*) FROM examples GROUP BY status"))
    assert statuses == {"pending_review": n}, statuses


def assert_audit_chain_verifies() -> None:
    from app.audit import service as audit
    from app.core.db import session_scope

    with session_scope() as s:
        result = audit.verify(s, mode="full")
    assert result.ok, result.to_dict()
