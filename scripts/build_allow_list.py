"""Lists the candidates for app/pii/data/allow_terms.txt and public_figures.txt: what the default scrubber
(no allow list, public entities scrubbed) finds as PERSON, LOCATION, NRP or ORGANIZATION in ordinary
instruction data, most frequent first.

    .venv/bin/python scripts/build_allow_list.py [--corpora ../shared/corpora/instruct] > /tmp/candidates.tsv

Read: alpaca-libre (v1 and v2), self-instruct's seed tasks and OpenAssistant (the 100 trees and the 250
prompts). Never read: Dolly and GPTeacher, on which bench/pii_clean.py measures, and the PII evaluation
corpus. Each candidate was then judged by hand: technologies, products, programming and natural
languages, foods, celestial bodies and common nouns went to allow_terms.txt, well-known people and
fictional characters to public_figures.txt, private-looking or ambiguous names nowhere. Both files also
hold hand-added members of the same kinds (e.g. the programming languages and spoken languages that are
too rare in these corpora to show up); their headers say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def texts(corpora: Path) -> list[str]:
    out: list[str] = []
    for name in ("alpaca_libre_tasks_v1.jsonl", "alpaca_libre_tasks_v2.jsonl"):
        for line in (corpora / name).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the corpus's own malformed lines
            out.extend(v for k in ("instruction", "input", "output") if isinstance(v := rec.get(k), str) and v)
    for line in (corpora / "selfinstruct_seed_tasks.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        out.append(rec["instruction"])
        for inst in rec["instances"]:
            out.extend(v for v in (inst["input"], inst["output"]) if v)

    def walk(node: dict) -> None:
        out.append(node["text"])
        for reply in node.get("replies", []):
            walk(reply)

    for line in (corpora / "oasst_en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        walk(json.loads(line)["prompt"])
    for line in (corpora / "oasst_prompt_lottery_en_250_text.jsonl").read_text(encoding="utf-8").splitlines():
        out.append(json.loads(line))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpora", type=Path, default=Path("../shared/corpora/instruct"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from app.core.config import PiiSettings
    from app.pii.engine import PiiEngine
    from app.pii.schemas import PiiPolicy

    engine = PiiEngine(PiiSettings())
    policy = PiiPolicy(entities=["PERSON", "LOCATION", "NRP", "ORGANIZATION"], public_entities="scrub",
                       context={"builtin_allow_list": False, "code_spans": False, "code_lines": "off"})
    found: Counter[tuple[str, str]] = Counter()
    batch = texts(args.corpora)
    for text, results in zip(batch, engine.analyze_batch(batch, policy)):
        for r in results:
            found[(r.entity_type, " ".join(text[r.start : r.end].split()))] += 1
    for (entity_type, value), n in found.most_common():
        if n >= 2:
            print(f"{n}\t{entity_type}\t{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
