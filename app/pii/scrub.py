"""Scrub structured examples: every text field, structure kept, one finding per replaced span.

Pure functions over an engine; no database. The pipeline stage (service.py) feeds it batches and stores the
results; bench/pii and the tests call it directly.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from presidio_analyzer import RecognizerResult
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonymizerInput

from app.pii.context import code_spans, overlaps
from app.pii.engine import PiiEngine, resolve_overlaps
from app.pii.operators import ExampleOperators
from app.pii.paths import get_path, parse_path, set_path  # noqa: F401  (re-exported)
from app.pii.recognizers.common import make_result
from app.pii.schemas import PiiPolicy
from app.pii.tokens import value_token, word_count

# Keys whose string values are free text in the four task formats (and chat message `name`, which is often a
# person's name). Everything else (role, ids, numbers) is structure and is left alone.
TEXT_KEYS = frozenset(
    {"content", "instruction", "input", "output", "prompt", "completion", "chosen", "rejected", "system",
     "response", "text", "name"}
)


def free_text_fields(content: Any, _prefix: str = "") -> list[tuple[str, str]]:
    """(path, text) for every free-text string, e.g. ("messages[2].content", "..."), in document order."""
    out: list[tuple[str, str]] = []
    if isinstance(content, dict):
        for key, value in content.items():
            path = f"{_prefix}.{key}" if _prefix else key
            if isinstance(value, str):
                if key in TEXT_KEYS:
                    out.append((path, value))
            elif isinstance(value, (dict, list)):
                out.extend(free_text_fields(value, path))
    elif isinstance(content, list):
        for i, value in enumerate(content):
            path = f"{_prefix}[{i}]"
            if isinstance(value, str):
                # A list of strings under a text key (e.g. "chosen": ["...", "..."]).
                if _prefix.rsplit(".", 1)[-1].split("[")[0] in TEXT_KEYS:
                    out.append((path, value))
            else:
                out.extend(free_text_fields(value, path))
    return out


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class Finding:
    field_path: str
    entity_type: str
    start: int  # in the raw text of the field
    end: int
    scrubbed_start: int  # where the replacement sits in the scrubbed text of the field
    scrubbed_end: int
    score: float
    recognizer: str
    operator: str
    engine: str
    model: str
    # HMAC of the replaced value (app/pii/tokens.py): what dedup compares in its place. None without a key.
    value_token: str | None = None
    value_words: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScrubInput:
    content: dict
    # Seeds the surrogates, so a redelivered task produces the same fake names (e.g. the example id).
    key: str
    fields: Sequence[tuple[str, str]] | None = None


@dataclass
class ScrubResult:
    content: dict
    findings: list[Finding]
    # {"oversize": {path: chars}, "languages": {path: "non_en"}, "mode": "pattern_only"}; empty when clean.
    flags: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.findings)


# --- language and size -------------------------------------------------------------------------------------

_EN_STOP = frozenset(
    ["the", "a", "an", "and", "or", "of", "to", "in", "is", "are", "was", "were", "be", "been", "it", "that", "this", "for", "on", "with", "as", "at", "by", "from", "you", "your", "i", "we", "they", "he", "she", "not", "do", "does", "did", "have", "has", "had", "can", "will", "would", "should", "what", "which", "who", "how", "my", "me", "our"]
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def guess_language(text: str) -> str | None:
    """'en', 'non_en' or None (too short to tell). Cheap on purpose: it only decides whether to note that
    the English NER model may have missed names; the text is scrubbed either way."""
    words = _WORD.findall(text[:4000])
    if len(words) < 8:
        return None
    latin = sum(1 for w in words if w.isascii())
    if latin / len(words) < 0.6:
        return "non_en"
    stop = sum(1 for w in words if w.lower() in _EN_STOP)
    return "en" if stop / len(words) >= 0.08 else "non_en"


# How far each window reads past its cut: a value the cut falls inside ("0494 92 | 82 32", a name on a
# very long single line) is still seen whole by the window it starts in.
WINDOW_OVERLAP = 256


def windows(text: str, max_chars: int) -> list[tuple[int, int, str]]:
    """Split an over-size text into windows at whitespace (so words are not cut); all text is kept.
    Returns (offset, owned_end, piece): the window owns results that start before `owned_end` (a text
    offset) and its piece reads up to WINDOW_OVERLAP characters further."""
    if len(text) <= max_chars:
        return [(0, len(text), text)]
    out: list[tuple[int, int, str]] = []
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start + max_chars // 2, end), text.rfind(" ", start + max_chars // 2, end))
            if cut > start:
                end = cut
        out.append((start, end, text[start : min(len(text), end + WINDOW_OVERLAP)]))
        start = end
    return out


# --- the scrubber ------------------------------------------------------------------------------------------


def analyze_fields(engine: PiiEngine, texts: Sequence[str], policy: PiiPolicy) -> list[list[RecognizerResult]]:
    """Results per text. Identical texts (a system prompt repeated in every example) are analyzed once, and
    the whole batch goes through spaCy in one `pipe` call."""
    pieces: list[str] = []
    index: dict[str, int] = {}
    plan: list[list[tuple[int, int, int]]] = []  # per text: (offset, owned end, piece index)
    for text in texts:
        parts = []
        for offset, owned_end, piece in windows(text, policy.max_chars):
            if piece not in index:
                index[piece] = len(pieces)
                pieces.append(piece)
            parts.append((offset, owned_end, index[piece]))
        plan.append(parts)
    analyzed = engine.analyze_batch(pieces, policy) if pieces else []
    out: list[list[RecognizerResult]] = []
    for parts in plan:
        results: list[RecognizerResult] = []
        for offset, owned_end, i in parts:
            for r in analyzed[i]:
                if r.start + offset >= owned_end:
                    continue  # the next window owns it
                results.append(
                    RecognizerResult(r.entity_type, r.start + offset, r.end + offset, r.score,
                                     recognition_metadata=r.recognition_metadata)
                )
        # A value read whole past one cut may overlap the next window's fragment of it.
        out.append(resolve_overlaps(results) if len(parts) > 1 else results)
    return out


def scrub_examples(
    engine: PiiEngine, items: Sequence[ScrubInput], policy: PiiPolicy, *, hash_key: bytes,
    token_key: bytes | None = None,
) -> list[ScrubResult]:
    fields_per_item = [list(item.fields) if item.fields is not None else free_text_fields(item.content) for item in items]
    flat: list[str] = [text for fields in fields_per_item for _, text in fields if text and text.strip()]
    analyzed = iter(analyze_fields(engine, flat, policy))

    info = engine.info
    out: list[ScrubResult] = []
    for item, fields in zip(items, fields_per_item):
        content = copy.deepcopy(item.content)
        operators = ExampleOperators(policy, hash_key, item.key)
        findings: list[Finding] = []
        flags: dict = {}
        if info.mode == "pattern_only":
            flags["mode"] = "pattern_only"
        present = [(path, text) for path, text in fields if text and text.strip()]
        per_field = example_mentions(present, [next(analyzed) for _ in present], policy)
        for (path, text), results in zip(present, per_field):
            if len(text) > policy.max_chars:
                flags.setdefault("oversize", {})[path] = len(text)
            if policy.language == "en" and guess_language(text) == "non_en":
                # Scrubbed all the same (patterns are language-neutral); noted because the English NER
                # model misses names in other languages, so a reviewer should look.
                flags.setdefault("languages", {})[path] = "non_en"
            if not results:
                continue
            scrubbed, field_findings = _anonymize(engine, text, results, operators, path, token_key)
            set_path(content, path, scrubbed)
            findings.extend(field_findings)
        out.append(ScrubResult(content=content, findings=findings, flags=flags))
    return out


_MENTION_TYPES = ("PERSON",)
_RETYPED = frozenset({"LOCATION", "NRP", "ORGANIZATION"})


def example_mentions(fields: Sequence[tuple[str, str]], results: list[list[RecognizerResult]],
                     policy: PiiPolicy) -> list[list[RecognizerResult]]:
    """A name found anywhere in an example is scrubbed at every mention, in every field: "Inkeri" found in
    the question and missed in the answer would otherwise be in clear there, and a word problem whose two
    mentions of a person got different treatment has two people where it had one. Mentions in code spans
    stay, as everything the name finders find there."""
    values = {text[r.start : r.end] for (_, text), rs in zip(fields, results) for r in rs
              if r.entity_type in _MENTION_TYPES and len(text[r.start : r.end].strip()) >= 3}
    values = {v for v in values if v == v.strip() and not v.islower()}
    if not values:
        return results
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
                         + r")(?!\w)")
    out = []
    for (_, text), rs in zip(fields, results):
        # The same word the model called a place at another mention ("older than Lisbet") is the person.
        rs = [make_result("PERSON", r.start, r.end, r.score, "ExampleMentionPropagation", "ExampleMentionPropagation")
              if r.entity_type in _RETYPED and text[r.start : r.end] in values else r for r in rs]
        code = None
        added = []
        for m in pattern.finditer(text):
            if any(r.start < m.end() and m.start() < r.end for r in rs):
                continue
            if code is None:
                code = code_spans(text, blocks=policy.context.code_spans, lines=policy.context.code_lines)
            if overlaps(m.start(), m.end(), code):
                continue
            added.append(make_result("PERSON", m.start(), m.end(), 0.75, "ExampleMentionPropagation",
                                     "ExampleMentionPropagation"))
        out.append(sorted([*rs, *added], key=lambda r: r.start) if added else rs)
    return out


def _anonymize(engine: PiiEngine, text: str, results: list[RecognizerResult], operators: ExampleOperators,
               path: str, token_key: bytes | None = None) -> tuple[str, list[Finding]]:
    ops = {
        et: OperatorConfig("custom", {"lambda": partial(operators.replace, et)})
        for et in {r.entity_type for r in results}
    }
    anonymized = engine.anonymizer.anonymize(
        text=text,
        analyzer_results=[AnonymizerInput(r.entity_type, r.start, r.end, r.score) for r in results],
        operators=ops,
        # Spans are already disjoint (engine.resolve_overlaps); merging would break the 1:1 finding map.
        merge_entities_with_spaces=False,
    )
    items = sorted(anonymized.items, key=lambda i: i.start)
    ordered = sorted(results, key=lambda r: r.start)
    if len(items) != len(ordered):  # pragma: no cover - guarded by resolve_overlaps
        raise RuntimeError("anonymizer merged spans; findings would not map onto the output")
    info = engine.info
    findings = [
        Finding(
            field_path=path,
            entity_type=r.entity_type,
            start=r.start,
            end=r.end,
            scrubbed_start=item.start,
            scrubbed_end=item.end,
            score=round(float(r.score), 4),
            recognizer=(r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY, "unknown"),
            operator=operators.spec(r.entity_type).type.value,
            engine=info.engine,
            model=info.model,
            value_token=value_token(token_key, text[r.start : r.end]) if token_key is not None else None,
            value_words=word_count(text[r.start : r.end]) if token_key is not None else None,
        )
        for r, item in zip(ordered, items)
    ]
    return anonymized.text, findings


def apply_spans(scrubbed: str, raw: str, findings: Iterable[Finding], restore: set[int]) -> str:
    """Put back the raw text of the findings whose index is in `restore` (reviewer said false positive)."""
    out = scrubbed
    for i, f in sorted(enumerate(findings), key=lambda p: -p[1].scrubbed_start):
        if i in restore:
            out = out[: f.scrubbed_start] + raw[f.start : f.end] + out[f.scrubbed_end :]
    return out
