"""The snapshot bias report equals the report the previous implementation produced on a fixed fixture.

The block path was rewritten for speed (issue 19's benchmark: per-block dictionary-encoded token lookups,
co-occurrence by pair expansion instead of BLAS products); `data/bias_report_golden.json` is the report the
code before that rewrite (commit 23a194c) produced for this fixture, so the rewrite is held to the same
figures, on both databases and at block sizes that put block edges mid-fixture.

The fixture is seeded text that reaches every matching rule: possessives (ASCII and typographic), trimmed
punctuation, two-word terms, title-case-only first names, non-ASCII blocks, tabs and newlines, empty
fields, several sources and licenses (one missing), both splits, and erased members. Contents are written
onto the frozen revisions directly, so the PII scrubber's output plays no part.

If the lexicons change on purpose (`lexicons.version` differs from the golden file's), regenerate with
`WRITE_BIAS_GOLDEN=1 pytest tests/snapshots/test_bias_report_golden.py -k sqlite` and review the
diff.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import orjson

from tests.factories import freeze, ingest, new_dataset, set_status

GOLDEN = Path(__file__).parent / "data" / "bias_report_golden.json"
N = 240
# Varies per snapshot, so not part of the comparison.
VOLATILE = ("snapshot_id", "manifest_sha256")

WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "she he her him his hers they them woman women man men mother father girl boy wife husband lady gentleman "
    "trans woman nonbinary person visually impaired older adult young child teenager elderly middle-aged "
    "Muslim Jewish Hindu Christian Buddhist atheist Mexican Chinese Indian German Nigerian Black white Asian "
    "gay lesbian bisexual straight wheelchair user deaf blind autistic "
    "nurse nurses engineer engineers teacher doctor manager lawyer cook secretary programmer "
    "kind love wonderful happy terrible angry hates bad good awful brilliant "
    "the a is was and worked as today coffee paper old car with of to in for on"
).split()
DECORATED = ["she,", "(he)", "woman's", "Maria\u2019s", "\u2014", "\u201cnurse\u201d", "-", "'s", "HER", "She.",
             "Maria", "maria", "MARIA", "John", "Mary", "James", "Anna", "Zo\u00eb", "caf\u00e9", "na\u00efve",
             "\u00dcnal", "Jos\u00e9", "trans\twoman", "older\nadult", "visually  impaired", "Mother's", "father!",
             "[teacher]", "doctor?", "Muslim-American", "gay;", "x\u2019s"]


def _text(rng: random.Random, hi: int) -> str:
    n = rng.randint(0, hi)
    words = [rng.choice(DECORATED) if rng.random() < 0.2 else rng.choice(WORDS) for _ in range(n)]
    return " ".join(words)


def _contents() -> list[tuple[str, str | None, str, dict]]:
    """(source, license, split, content) per member, the same on every run."""
    rng = random.Random(19)
    out = []
    for i in range(N):
        src = ("alpha", "beta", "gamma")[i % 3]
        lic = ("MIT", "CC-BY-4.0", None)[(i // 3) % 3]
        split = "validation" if i % 5 == 0 else "train"
        content = {"instruction": _text(rng, 20), "input": "" if i % 4 else _text(rng, 8), "output": _text(rng, 40)}
        out.append((src, lic, split, content))
    return out


def _build(api) -> dict:
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models.example import Example, ExampleRevision
    from app.models.snapshot import SnapshotMember

    ds = new_dataset(api, governance_policy={"bias": {"share_difference": 0.05, "min_mentions": 5}})
    rows = _contents()
    lines = []
    for i, (src, lic, _split, _c) in enumerate(rows):
        prov = {"source": src, "source_ref": f"g-{i}"}
        if lic:
            prov["license"] = lic
        lines.append({"instruction": f"placeholder {i}", "input": "", "output": f"placeholder answer {i}",
                      "provenance": prov})
    ids = ingest(api, ds, lines)
    set_status(ids, "approved")
    snap = freeze(api, ds, validation_fraction=0.0)
    with session_scope() as s:
        members = s.execute(select(Example.source_ref, SnapshotMember).join(
            Example, Example.id == SnapshotMember.example_id).where(
            SnapshotMember.snapshot_id == uuid.UUID(snap["id"]))).all()
        assert len(members) == N
        erased = []
        for ref, m in members:
            i = int(ref.split("-")[1])
            _src, _lic, split, content = rows[i]
            s.get(ExampleRevision, m.revision_id).content = content
            m.split = split
            if i in (7, 100, 201):
                erased.append(str(m.example_id))
    set_status(erased, "erased")
    return snap


def _report(snap: dict, block_rows: int) -> dict:
    from app.core.db import session_scope
    from app.models.snapshot import Snapshot
    from app.snapshots import bias

    bias._CACHE.clear()
    with session_scope() as s:
        rep = bias.compute(s, s.get(Snapshot, uuid.UUID(snap["id"])), block_rows=block_rows)
    bias._CACHE.clear()
    # As the API serves it (numpy scalars become JSON numbers).
    rep = orjson.loads(orjson.dumps(rep, option=orjson.OPT_SERIALIZE_NUMPY))
    return {k: v for k, v in rep.items() if k not in VOLATILE}


def test_report_equals_the_previous_implementation(api, db):
    snap = _build(api)
    got = _report(snap, 10_000)
    if os.environ.get("WRITE_BIAS_GOLDEN") == "1":
        GOLDEN.write_bytes(orjson.dumps(got, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
    want = orjson.loads(GOLDEN.read_bytes())
    assert got["lexicons"]["version"] == want["lexicons"]["version"], \
        "the lexicons changed: regenerate the golden file (see this module's docstring) and review the diff"
    # The fixture reaches the rules it is meant to: every dimension, names, two-word terms, both splits.
    assert got["members_examined"] == N - 3 and got["erased_excluded"] == 3
    assert all(d["mentions"] for d in got["dimensions"].values())
    assert got["dimensions"]["gender"]["groups"]["female"]["by_evidence"].get("name")
    assert got["members_by_split"]["validation"] and got["flags"]
    assert got == want
    # Block edges fall mid-fixture (and mid-source), and the report does not move.
    assert _report(snap, 37) == want
