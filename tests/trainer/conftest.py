import json
import random

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from trainer.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


def make_records(n: int = 40, seed: int = 0) -> list[dict]:
    """A mixed-format export: every format, a validation split, one multi-turn chat."""
    from trainer.data import content_sha256

    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            fmt = "chat"
            content = {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"What is {i} plus one?"},
                    {"role": "assistant", "content": f"{i + 1}."},
                    {"role": "user", "content": "And doubled?"},
                    {"role": "assistant", "content": f"{2 * (i + 1)}." + " really" * rng.randrange(4)},
                ]
            }
        elif k == 1:
            fmt = "instruction"
            content = {"instruction": "Reverse the word.", "input": f"word{i}", "output": f"{i}drow"}
        elif k == 2:
            fmt = "completion"
            content = {
                "prompt": f"Count to {i % 9}:",
                "completion": " " + " ".join(str(j) for j in range(i % 9)),
            }
        else:
            fmt = "preference"
            content = {
                "prompt": "Say something kind.",
                "chosen": "You are doing well." * (1 + i % 3),
                "rejected": "No.",
            }
        out.append(
            {
                "revision_id": f"rev-{i:03d}",
                "example_id": f"ex-{i:03d}",
                "split": "validation" if i % 8 == 0 else "train",
                "format": fmt,
                "content": content,
                "content_sha256": content_sha256(content),
            }
        )
    return out


@pytest.fixture
def records():
    return make_records()


@pytest.fixture
def export_file(tmp_path, records):
    p = tmp_path / "export.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return p
