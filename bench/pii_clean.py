"""PII scrubbing on text that holds no private data: what it rewrites anyway.

    python -m bench.pii_clean [--dolly N] [--code N] [--halves tune|measure ...] [--model NAME]

* Clean-text precision: scrubbed words per 1,000 words on Dolly answers (the `text` field of
  ../shared/corpora/instruct/dolly15k_first6400_flan-t5-xl_decode.jsonl). Split by record id: even ids are
  the tune half (looked at while writing app/pii/context.py and the allow-list rules), odd ids the measure
  half (only measured). The allow list and public-figure list were built from other corpora altogether
  (scripts/build_allow_list.py).
* Code integrity: on GPTeacher code-instruct (gpteacher_codegen-instruct.json), the share of responses
  left byte-identical after scrubbing, among responses in which no validated pattern (email, card, IBAN,
  SSN, IP, secret...) found anything. Under the `code` profile (the target) and `default`. A development
  figure: the code rules of app/pii/context.py were written by reading what they missed here (no other
  corpus at hand has enough code: alpaca-libre holds 9 code answers in 4,655).
* Code integrity, measured: the same on 600 top-level functions of the running Python's standard library,
  each after a one-line lead and unfenced (`--stdlib N` per half): code nobody here read before #15's
  fourth round. Split by a salted hash into a tune half and a measure half; the 100% target is read on
  the measure half.
* Word problems: 200 problems from 8 templates written here with invented names (first names from the
  name gazetteer, chosen by a seeded draw). Under `math_word_problems`: the share still solvable (every
  number kept, no placeholder, each name written the same way at every mention, replaced or not, and two
  people never made one); under `default`, the scrubbed words per 1,000.

Baseline in the same run: the scrubber as it was before #15, i.e. the same engine with code spans off,
no built-in allow list and public entities scrubbed. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

CORPORA = Path("../shared/corpora/instruct")
DOLLY = CORPORA / "dolly15k_first6400_flan-t5-xl_decode.jsonl"
GPTEACHER = CORPORA / "gpteacher_codegen-instruct.json"
TARGET_WORDS_PER_1000 = 10.0
TARGET_CODE_IDENTICAL = 1.0
TARGET_MATH_SOLVABLE = 1.0
# Dolly: even ids tune, odd ids measure.
HALVES = ("tune", "measure")
# What a dataset got before #15: every name finder everywhere, no built-in allow list, public names scrubbed.
BASELINE = {"public_entities": "scrub", "context": {"code_spans": False, "code_lines": "off",
                                                     "builtin_allow_list": False}}
PATTERN_TYPES = frozenset({"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "US_ITIN",
                           "IP_ADDRESS", "SECRET", "CRYPTO", "UK_NHS", "US_PASSPORT", "US_BANK_NUMBER",
                           "MEDICAL_LICENSE", "URL"})

_TEMPLATES = [
    "{a} has {n1} apples. {b} gives {a} {n2} more apples. How many apples does {a} have now?",
    ("{a} reads {n1} pages a day. {b} reads {n2} pages a day. How many more pages does {b} read than {a} in "
    "{n3} days?"),
    "{a} and {b} share {n1} marbles. {a} gets {n2} more than {b}. How many marbles does {b} get?",
    "{a} bought {n1} pencils at {n2} cents each and paid with a {n3} dollar bill. How much change did {a} get?",
    "{a} runs {n1} km on Monday and {n2} km on Tuesday. {b} runs {n3} km in total. Who ran farther, {a} or {b}?",
    ("There are {n1} students in {a}'s class. {b} brought {n2} cookies for everyone. How many cookies does each "
    "student get?"),
    "{a} is {n1} years old. {b} is {n2} years older than {a}. How old will {b} be in {n3} years?",
    ("{a} saves {n1} dollars a week. {b} saves {n2} dollars a week. After {n3} weeks, how much have {a} and "
    "{b} saved together?"),
]


def _words(text: str) -> int:
    return len(text.split())


def _engine():
    from app.core.config import PiiSettings
    from app.pii.engine import PiiEngine

    return PiiEngine(PiiSettings())


def _policy(profile: str, over: dict | None = None):
    from app.pii.schemas import effective_policy

    return effective_policy(profile, over or {})


def _scrub(engine, contents: list[dict], policy) -> list:
    from app.pii.scrub import ScrubInput, scrub_examples

    items = [ScrubInput(c, key=str(i)) for i, c in enumerate(contents)]
    return scrub_examples(engine, items, policy, hash_key=b"bench-pii-clean-key-0123456789ab")


def words_per_1000(engine, texts: list[str], policy) -> dict:
    results = _scrub(engine, [{"text": t} for t in texts], policy)
    total = sum(_words(t) for t in texts)
    scrubbed = 0
    by_recognizer: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    for text, res in zip(texts, results):
        for f in res.findings:
            n = _words(text[f.start : f.end])
            scrubbed += n
            by_recognizer[f.recognizer] += n
            by_type[f.entity_type] += n
    return {"texts": len(texts), "words": total, "scrubbed_words": scrubbed,
            "per_1000": round(1000 * scrubbed / total, 2) if total else None,
            "records_touched": sum(1 for r in results if r.findings),
            "by_recognizer": dict(by_recognizer.most_common()), "by_type": dict(by_type.most_common())}


def dolly(engine, n: int, halves: tuple[str, ...] = HALVES) -> dict:
    records = [json.loads(line) for line in DOLLY.read_text(encoding="utf-8").splitlines()]
    texts_of = {"tune": [r["text"] for r in records if r["id"] % 2 == 0][:n],
                "measure": [r["text"] for r in records if r["id"] % 2 == 1][:n]}
    out = {}
    for half in halves:
        texts = texts_of[half]
        out[half] = {"ours": words_per_1000(engine, texts, _policy("default")),
                     "baseline": words_per_1000(engine, texts, _policy("default", BASELINE))}
    return out


def code_integrity(engine, n: int) -> dict:
    records = json.loads(GPTEACHER.read_text(encoding="utf-8"))[:n]
    responses = [r["response"] for r in records if r["response"].strip()]
    out = {}
    for name, policy in (("code", _policy("code")), ("default", _policy("default")),
                         ("baseline", _policy("default", BASELINE))):
        results = _scrub(engine, [{"text": t} for t in responses], policy)
        clean = [(t, r) for t, r in zip(responses, results)
                 if not any(f.entity_type in PATTERN_TYPES for f in r.findings)]
        identical = [t for t, r in clean if r.content["text"] == t]
        changed = Counter(t[f.start : f.end] for t, r in clean for f in r.findings)
        out[name] = {"blocks": len(clean), "with_pattern_pii": len(responses) - len(clean),
                     "identical": len(identical),
                     "share_identical": round(len(identical) / len(clean), 4) if clean else None,
                     "top_rewritten": [v for v, _ in changed.most_common(10)]}
    return out


STDLIB_SALT = "pedigree-pii-code-measure-v1"
# Prose a code answer opens with, as instruction data writes it; the code follows on its own lines,
# unfenced, so it is the code-line rules that have to find it (a fenced block is found by its fence).
_STDLIB_LEADS = ["Here is the function:", "You can write it like this:", "The implementation looks like this:",
                 "This is how the standard library does it:", "Try the following code:"]


def stdlib_functions(n: int, half: str = "measure") -> list[str]:
    """Code answers this project never read: top-level functions of the running Python's pure-Python
    standard library (5 to 40 lines), picked by SHA-256 of module and name under a fixed salt, each after
    a one-line lead. Written by CPython's authors, with their comments, docstrings, string literals and
    names. Split like Dolly: in the hash order, even ranks are the tune half (read when a rule misses),
    odd ranks the measure half (only ever counted), which carries the code-integrity target."""
    import ast
    import hashlib
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, str]] = []
    for path in sorted(root.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and 5 <= node.end_lineno - node.lineno + 1 <= 40:
                segment = ast.get_source_segment(source, node)
                if segment:
                    key = hashlib.sha256(f"{STDLIB_SALT}:{path.stem}.{node.name}".encode()).hexdigest()
                    found.append((key, segment))
    found.sort()
    picked = found[0 if half == "tune" else 1 :: 2][:n]
    return [f"{_STDLIB_LEADS[i % len(_STDLIB_LEADS)]}\n\n{code}\n" for i, (_, code) in enumerate(picked)]


def code_measure(engine, n: int, half: str = "measure") -> dict:
    """Code integrity on standard-library functions (stdlib_functions), same rule as on GPTeacher: among
    answers in which no validated pattern found anything, the share left byte-identical."""
    texts = stdlib_functions(n, half)
    out = {"answers": len(texts), "python": sys.version.split()[0]}
    for name, policy in (("code", _policy("code")), ("default", _policy("default")),
                         ("baseline", _policy("default", BASELINE))):
        results = _scrub(engine, [{"text": t} for t in texts], policy)
        clean = [(t, r) for t, r in zip(texts, results)
                 if not any(f.entity_type in PATTERN_TYPES for f in r.findings)]
        identical = sum(1 for t, r in clean if r.content["text"] == t)
        changed = Counter(t[f.start : f.end] for t, r in clean for f in r.findings)
        out[name] = {"blocks": len(clean), "with_pattern_pii": len(texts) - len(clean), "identical": identical,
                     "share_identical": round(identical / len(clean), 4) if clean else None,
                     "top_rewritten": [v for v, _ in changed.most_common(10)]}
    return out


def word_problems(seed: int = 15) -> list[tuple[str, list[str]]]:
    from app.pii.gazetteer import common_word_names, first_names

    stop = common_word_names()
    pool = sorted(n for n, freq in first_names().items()
                  if freq >= 5 and n.isalpha() and len(n) >= 4 and n not in stop)
    rng = random.Random(seed)
    out = []
    for i in range(200):
        a, b = (w.capitalize() for w in rng.sample(pool, 2))
        nums = {f"n{k}": str(rng.randint(2, 60)) for k in (1, 2, 3)}
        text = _TEMPLATES[i % len(_TEMPLATES)].format(a=a, b=b, **nums)
        out.append((text, [n for n in (a, b) if n in text]))
    return out


def solvable(source: str, names: list[str], scrubbed: str) -> bool:
    if "<" in scrubbed or re.findall(r"\d+", source) != re.findall(r"\d+", scrubbed):
        return False
    # Each name became one other word sequence, the same at every mention, and the two stay different.
    pattern = re.escape(source)
    for k, name in enumerate(names):
        pattern = pattern.replace(re.escape(name), f"(?P<n{k}>.+?)", 1).replace(re.escape(name), f"(?P=n{k})")
    m = re.fullmatch(pattern, scrubbed)
    if not m:
        return False
    values = [m.group(f"n{k}") for k in range(len(names))]
    # A name left as it was is fine; what breaks a problem is two people becoming one, or one becoming two.
    return len(set(values)) == len(values)


def math(engine) -> dict:
    problems = word_problems()
    texts = [p for p, _ in problems]
    out = {"problems": len(problems)}
    for name, policy in (("math_word_problems", _policy("math_word_problems")), ("default", _policy("default")),
                         ("baseline", _policy("default", BASELINE))):
        results = _scrub(engine, [{"text": t} for t in texts], policy)
        ok = sum(solvable(t, names, r.content["text"]) for (t, names), r in zip(problems, results))
        out[name] = {"solvable": ok, "share_solvable": round(ok / len(problems), 4),
                     "changed": sum(1 for r in results if r.findings),
                     "per_1000": words_per_1000(engine, texts, policy)["per_1000"]}
    return out


def run(dolly_n: int = 1000, code_n: int = 5000, halves: tuple[str, ...] = HALVES,
        stdlib_n: int = 600) -> dict:
    """`halves` picks the Dolly halves to run (`("tune",)` compares engines without touching the measure
    half, and skips the code measure set too); without the measure half the Dolly and code checks cannot
    pass."""
    logging.disable(logging.WARNING)
    engine = _engine()
    figures = {"dolly_answers": dolly(engine, dolly_n, halves), "gpteacher_code": code_integrity(engine, code_n),
               "word_problems": math(engine)}
    if stdlib_n:
        figures["stdlib_code"] = {half: code_measure(engine, stdlib_n, half) for half in halves}
    dolly_fig = figures["dolly_answers"]
    measured = dolly_fig["measure"]["ours"]["per_1000"] if "measure" in dolly_fig else None
    # The target is read on the measure set; GPTeacher's share is the development figure beside it.
    identical = (figures["stdlib_code"]["measure"]["code"]["share_identical"]
                 if "measure" in figures.get("stdlib_code", {}) else None)
    math_ok = figures["word_problems"]["math_word_problems"]["share_solvable"]
    checks = {"dolly_words_per_1000": measured is not None and measured <= TARGET_WORDS_PER_1000,
              "code_identical": identical is not None and identical >= TARGET_CODE_IDENTICAL,
              "math_solvable": math_ok >= TARGET_MATH_SOLVABLE}
    return {
        "bench": "pii_clean",
        "model": engine.info.model,
        "figures": figures,
        "headline": {"dolly_measure_words_per_1000": measured,
                     "dolly_measure_words_per_1000_baseline":
                         dolly_fig["measure"]["baseline"]["per_1000"] if "measure" in dolly_fig else None,
                     "dolly_tune_words_per_1000":
                         dolly_fig["tune"]["ours"]["per_1000"] if "tune" in dolly_fig else None,
                     "code_share_identical_measure": identical,
                     "code_share_identical_tune": figures["gpteacher_code"]["code"]["share_identical"],
                     "code_share_identical_baseline": figures["gpteacher_code"]["baseline"]["share_identical"],
                     "math_share_solvable": math_ok},
        "targets": {"dolly_words_per_1000_max": TARGET_WORDS_PER_1000, "code_identical_min": TARGET_CODE_IDENTICAL,
                    "math_solvable_min": TARGET_MATH_SOLVABLE},
        "checks": checks,
        "split": ("Dolly: even ids tune, odd ids measure; GPTeacher: tune (the code rules were written on it); "
                  "standard-library functions: hash-split, even ranks tune, odd measure; word problems: generated here, measure"),
        "pass": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pii_clean", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dolly", type=int, default=1000, help="Dolly answers per half")
    parser.add_argument("--code", type=int, default=5000, help="GPTeacher records")
    parser.add_argument("--stdlib", type=int, default=600, help="standard-library functions (code, measure set)")
    parser.add_argument("--halves", nargs="+", choices=HALVES, default=list(HALVES), help="Dolly halves to run")
    parser.add_argument("--model", default=None, help="spaCy model (PEDIGREE_PII_SPACY_MODEL)")
    args = parser.parse_args(argv)
    if args.model:
        os.environ["PEDIGREE_PII_SPACY_MODEL"] = args.model
    for path in (DOLLY, GPTEACHER):
        if not path.exists():
            raise SystemExit(f"corpus file missing: {path} (see ../shared/corpora/README.md)")
    summary = run(args.dolly, args.code, tuple(args.halves), args.stdlib)
    for key, value in summary["headline"].items():
        print(f"{key:<45}{value}")
    for name, fig in summary["figures"]["gpteacher_code"].items():
        print(f"code[{name}] rewritten most: {fig['top_rewritten']}")
    for half, figs in summary["figures"].get("stdlib_code", {}).items():
        for name in ("code", "default", "baseline"):
            fig = figs[name]
            print(f"stdlib code, {half} half [{name}]: {fig['identical']} of {fig['blocks']} identical; "
                  f"rewritten most: {fig['top_rewritten']}")
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
