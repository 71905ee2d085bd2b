"""Recognizers that close gaps in Presidio's stock set, measured in docs/pii.md (bench/pii_eval).

Each one is a Presidio recognizer, so the analyzer's context enhancement, thresholds and allow-lists apply to
it like to the stock ones. Scores are chosen so that a bare match of a loose shape stays below the default
policy threshold (0.4) and only a match with a context word ("call", "fax", "card") or a validated checksum
gets through.
"""

from __future__ import annotations

import re
from functools import lru_cache

import regex
import tldextract
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.predefined_recognizers import EmailRecognizer

# Presidio compiles patterns case-insensitively by default; names and street words are recognised by
# their capitals, so these recognizers opt out.
_CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE

def make_result(entity_type: str, start: int, end: int, score: float, name: str, rid: str) -> RecognizerResult:
    # The context enhancer writes into analysis_explanation, so every result needs one.
    return RecognizerResult(
        entity_type=entity_type,
        start=start,
        end=end,
        score=score,
        analysis_explanation=AnalysisExplanation(recognizer=name, original_score=score),
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: rid,
        },
    )


# --- email -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def offline_tld_extractor() -> tldextract.TLDExtract:
    # The stock EmailRecognizer calls tldextract.extract(), whose default instance fetches the public suffix
    # list over HTTPS on first use (and writes a cache under $HOME). Workers have no internet and must not
    # block on it: use the snapshot bundled in the wheel, never the network, never the disk cache.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    def validate_result(self, pattern_text: str) -> bool:
        return offline_tld_extractor()(pattern_text).fqdn != ""


# --- payment cards -----------------------------------------------------------------------------------------

# Issuer prefixes (IIN ranges) with the lengths each network issues. Presidio's stock pattern stops at
# 5[0-5]xx, so Mastercard's 2221-2720 series (issued since 2017), 19-digit Visa, 12-digit Maestro and
# 15-digit JCB (2131/1800) were never found.
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # Amex
    (37, 37, frozenset({15})),
    (300, 305, frozenset({14, 16, 19})),  # Diners
    (36, 36, frozenset({14, 16, 19})),
    (38, 39, frozenset({14, 16, 19})),
    (6011, 6011, frozenset({16, 19})),  # Discover
    (644, 649, frozenset({16, 19})),
    (65, 65, frozenset({16, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (2131, 2131, frozenset({15})),
    (1800, 1800, frozenset({15})),
    (50, 50, frozenset(range(12, 20))),  # Maestro
    (56, 69, frozenset(range(12, 20))),
    (62, 62, frozenset(range(16, 20))),  # UnionPay
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_network_ok(digits: str) -> bool:
    n = len(digits)
    for lo, hi, lengths in _CARD_RANGES:
        width = len(str(lo))
        if lo <= int(digits[:width]) <= hi and n in lengths:
            return True
    return False


class PaymentCardRecognizer(LocalRecognizer):
    """Luhn-valid numbers of 12-19 digits whose prefix and length match a card network."""

    _CANDIDATE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){11,18}(?![\w-])")
    CONTEXT = ["credit", "card", "visa", "mastercard", "amex", "discover", "jcb", "diners", "maestro", "cc"]  # noqa: RUF012 (Presidio's convention)

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entities=["CREDIT_CARD"],
            supported_language=supported_language,
            context=self.CONTEXT,
            name="PaymentCardRecognizer",
        )

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if "CREDIT_CARD" not in entities:
            return []
        out = []
        for m in self._CANDIDATE.finditer(text):
            digits = re.sub(r"[ -]", "", m.group())
            if not (luhn_ok(digits) and card_network_ok(digits)):
                continue
            # A 12-14 digit Luhn-valid number with a plausible prefix happens by chance 1 time in 10: keep it
            # under the context bar's reach but above the default threshold only with a context word.
            score = 0.9 if len(digits) >= 15 else 0.35
            out.append(make_result("CREDIT_CARD", m.start(), m.end(), score, self.name, self.id))
        return out


# --- phone numbers -----------------------------------------------------------------------------------------


class LoosePhoneRecognizer(LocalRecognizer):
    """Digit groups shaped like a phone number, in any national format.

    libphonenumber (the stock PhoneRecognizer) only accepts numbers that are valid for one of the configured
    regions, so "(37) 788-063", "0494 92 82 32" or "01.84.17.61.18" from outside those regions are missed.
    A loose shape alone scores 0.3 (under the default threshold); a context word such as "call", "fax" or
    "mobile" within a few words lifts it over.
    """

    _CANDIDATE = re.compile(
        r"(?<![\w+/.-])(?:\+|00)?\(?\d[\d().\s-]{5,22}\d(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w/]|[.-]\d)"
    )
    _DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
    _YEARS = re.compile(r"^(?:1[5-9]|20)\d\d\s?[-–/]\s?(?:1[5-9]|20)\d\d$")  # "2019-2020"
    # Checked on the raw text around the match rather than through Presidio's lemma enhancer: spaCy lists
    # "call" as a stop word, and the enhancer drops stop words from the context window.
    _CONTEXT = re.compile(
        r"(?i)\b(?:phone|call|tel|telephone|mobile|cell|fax|desk|office|contact|reach|answering|whatsapp|sms|"
        r"text|number|ring|dial)\w*"
    )
    CONTEXT = ["phone", "telephone", "mobile", "fax"]  # noqa: RUF012 (Presidio's convention)

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entities=["PHONE_NUMBER"],
            supported_language=supported_language,
            context=self.CONTEXT,
            name="LoosePhoneRecognizer",
        )

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if "PHONE_NUMBER" not in entities:
            return []
        out = []
        for m in self._CANDIDATE.finditer(text):
            raw = m.group().rstrip()
            start, end = m.start(), m.start() + len(raw)
            core = re.split(r"\s?(?:x|ext\.?)\s?", raw)[0]
            digits = re.sub(r"\D", "", core)
            if not 7 <= len(digits) <= 15 or self._DATE.match(core.strip()) or self._YEARS.match(core.strip()):
                continue
            if "\n" in raw:
                continue
            if core.count("(") != core.count(")"):
                continue
            if len(digits) >= 13 and luhn_ok(digits) and card_network_ok(digits):
                continue
            international = raw.startswith(("+", "00"))
            grouped = bool(re.search(r"\d[\s().-]+\d", core))
            score = 0.5 if international and grouped else 0.3
            window = text[max(0, start - 40) : start] + " " + text[end : end + 20]
            if self._CONTEXT.search(window):
                score = min(1.0, score + 0.35)
            result = make_result("PHONE_NUMBER", start, end, score, self.name, self.id)
            result.recognition_metadata[RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY] = score > 0.5
            out.append(result)
        return out


# --- street addresses --------------------------------------------------------------------------------------

_CAP = r"[A-ZÀ-ÖØ-ÞĀ-Ž\u0370-\u03ff\u0400-\u042f][\w'’.-]*"
_STREET_WORDS = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|Terrace|Way|"
    r"Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Close|Row|Gardens|Grove|Mews|Hill|Walk|Trail|Loop|Pike"
)
_STREET_SUFFIXES = (
    r"straße|strasse|str\.|gasse|weg|platz|allee|ring|laan|straat|plein|gracht|gatan|vägen|gränd|katu|tie|"
    r"kuja|polku|gade|vej|gate|veien|vegen|utca|útja|út|tér|körút|sor|ulica"
)
_STREET_PREFIXES = (
    r"Via|Viale|Piazza|Corso|Largo|Rua|Avenida|Av\.|Travessa|Calle|Carrer|Paseo|Plaza|Camino|Rue|Chemin|"
    r"Allée|Impasse|Quai|ul\.|ulica|al\.|Strada|Str\.|Odos|Οδός|улица|ул\."
)


# Dates ("18 June 1812", "1925 February 21") have the shape of a continental address.
_MONTHS = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
           r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)")


class StreetAddressRecognizer(PatternRecognizer):
    """House number + street in US/UK order ("3482 Main St"), street + number in continental order
    ("Koskikatu 25", "Via Roma 131"), and unit designators ("Apt. 864", "Suite 201").

    Presidio has no address recognizer; spaCy tags at best the city (GPE) inside an address, so the house
    number and street, the most identifying part, stayed in the text.
    """

    PATTERNS = [  # noqa: RUF012 (Presidio's convention)
        Pattern(
            "number + street (US/UK)",
            rf"\b\d{{1,6}}[A-Za-z]?,?\s+(?:{_CAP}\s+){{0,4}}(?:{_STREET_WORDS})\b\.?",
            0.6,
        ),
        Pattern(
            "street suffix + number (continental)",
            rf"\b(?:{_CAP}\s+){{0,2}}[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]*(?:{_STREET_SUFFIXES})\s+\d{{1,5}}[a-zA-Z]?\b",
            0.6,
        ),
        Pattern(
            "street prefix + name + number",
            rf"\b(?:{_STREET_PREFIXES})\s+(?:[\w'’.-]+\s+){{0,4}}?\d{{1,5}}[a-zA-Z]?\b",
            0.55,
        ),
        Pattern(
            "number + capitalised words + number (continental, with house number first)",
            rf"\b(?!(?:1[5-9]|20)\d\d\b)\d{{2,6}}\s+(?!{_MONTHS}\b)(?:{_CAP}\s+){{1,3}}(?!(?:1[5-9]|20)\d\d\b)"
            rf"\d{{1,4}}[a-zA-Z]?\b",
            0.45,
        ),
        Pattern("unit", r"\b(?:Apt\.?|Apartment|Suite|Unit|Flat)\s*#?\s*\d{1,5}[A-Za-z]?\b", 0.5),
        Pattern("PO box", r"\b(?:P\.?\s?O\.?\s?Box|Postfach|Apartado)\s+\d{1,7}\b", 0.6),
    ]
    CONTEXT = ["address", "live", "lives", "street", "apt", "suite", "ship", "billing", "mail", "drop"]  # noqa: RUF012 (Presidio's convention)

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entity="STREET_ADDRESS",
            patterns=self.PATTERNS,
            context=self.CONTEXT,
            supported_language=supported_language,
            name="StreetAddressRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


# --- person names ------------------------------------------------------------------------------------------

_NAME_TOKEN = r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zà-öø-ÿā-ž'’-]+"
_HONORIFIC = r"(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sir|Mme|Mlle|Herr|Frau|Sr|Sra|Miss|mr|mrs|ms|dr)"
# Address labels put the unit right after the name ("Mrs. Barbara Yudina Apt. 675"): it is not a surname.
_UNIT = r"(?:Apt|Apartment|Suite|Unit|Flat)\b"
_NAME = rf"(?!{_HONORIFIC}\b){_NAME_TOKEN}(?:\s+(?:[A-Z]\.?\s+)?(?!{_UNIT}){_NAME_TOKEN}){{0,2}}"


class PersonCueRecognizer(PatternRecognizer):
    """Names introduced by an honorific or a self-introduction ("Mrs. Ayers", "my name is Rubija").

    The small spaCy model misses or mislabels (as ORG or GPE) many names from outside the English-speaking
    world; these cues are independent of the model and of where the name comes from.
    """

    PATTERNS = [  # noqa: RUF012 (Presidio's convention)
        Pattern(
            "honorific + name",
            rf"(?<=\b{_HONORIFIC}\.?\s){_NAME}",
            0.7,
        ),
    ]
    # Lookbehinds must be fixed-width in `re`, so the self-introduction cues are matched with one pattern
    # each; presidio uses the `regex` module, which allows variable width.
    _CUES = [  # noqa: RUF012 (Presidio's convention)
        r"(?i:my name is)",
        r"(?i:name is)",
        r"(?i:call me)",
        r"(?i:this is)",
        r"(?i:i am)",
        r"(?i:i'm)",
        r"(?i:speak to)",
        r"(?i:speak with)",
        r"(?i:ask for)",
        r"(?i:dear)",
        r"(?i:regards,?)",
        r"(?i:thanks,)",
        r"(?i:sincerely,?)",
        r"(?i:name:)",
        r"(?i:said)",
        r"(?i:written by)",
        r"(?i:directed by:?)",
        r"(?i:signed,?)",
    ]

    def __init__(self, supported_language: str = "en"):
        patterns = list(self.PATTERNS)
        patterns.append(
            Pattern("cue + name", rf"(?<=\b(?:{'|'.join(self._CUES)})\s+){_NAME}", 0.6),
        )
        super().__init__(
            supported_entity="PERSON",
            patterns=patterns,
            context=[],
            supported_language=supported_language,
            name="PersonCueRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


_TITLE_WORDS = frozenset(
    """uncle aunt saint king queen prince princess lord lady sir madam doctor professor captain general
    president senator judge father mother brother sister""".split()  # noqa: SIM905
)


def propagate_mentions(text: str, results: list[RecognizerResult], entity_type: str = "PERSON") -> list:
    """Once a name is found anywhere in a text, find its other mentions too (the model often tags a name on
    one mention and not the next; the surname alone later is still the same person). Returns the full
    result list: a mention the model tagged as a place or an organisation is re-typed."""
    names: set[str] = set()
    for r in results:
        if r.entity_type != entity_type or r.score < 0.5:
            continue
        value = text[r.start : r.end].strip()
        # Lower-case spans are where the model is least sure; spreading one would spread a false positive.
        if len(value) < 3 or not value[0].isupper():
            continue
        names.add(value)
        # The surname alone is the usual later mention; first names and title words ("Uncle Walter")
        # would spread far more false positives than they catch.
        last = value.split()[-1]
        if len(value.split()) > 1 and len(last) >= 4 and last[0].isupper() and last.lower() not in _TITLE_WORDS:
            names.add(last)
    if not names:
        return results
    # Only same-type spans block a mention: the model may have tagged the second "Nishiyama" as GPE.
    covered = [(r.start, r.end) for r in results if r.entity_type == entity_type]
    found: list[RecognizerResult] = []
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                         + r")(?!\w)")
    for m in pattern.finditer(text):
        if any(s < m.end() and m.start() < e for s, e in covered):
            continue
        covered.append((m.start(), m.end()))
        found.append(make_result(entity_type, m.start(), m.end(), 0.75, "MentionPropagation", "MentionPropagation"))
    spans = {(f.start, f.end) for f in found}
    kept = [r for r in results if not (r.entity_type in _NER_OTHER and (r.start, r.end) in spans)]
    return kept + found




# --- re-typing names the small model calls something else ---------------------------------------------------

_NAME_SHAPED = re.compile(r"^[A-ZÀ-ÖØ-ÞĀ-Ž][a-zà-öø-ÿā-ž'’-]+$|^[A-Z]\.?$")
_ORG_WORDS = frozenset(
    ["inc", "ltd", "llc", "llp", "plc", "corp", "co", "company", "group", "bank", "university", "college", "school", "institute", "technologies", "technology", "tech", "solutions", "partners", "consulting", "systems", "services", "labs", "lab", "media", "network", "networks", "capital", "holdings", "international", "foundation", "association", "agency", "department", "ministry", "council", "club", "team", "records", "studios", "studio", "press", "news", "times", "airlines", "airways", "motors", "energy", "health", "healthcare", "pharma", "software", "data", "cloud", "analytics", "traffic", "reports", "weekly", "public", "explorer", "global", "industries", "enterprises", "ventures", "trust", "fund", "society", "church", "hospital", "clinic", "center", "centre", "museum", "library", "restaurant", "hotel", "cafe", "bar", "store", "shop", "market", "insurance", "financial", "finance", "securities", "investments", "realty", "properties", "logistics", "express", "communications", "digital", "labs", "games", "entertainment", "productions", "pictures", "films", "music", "band", "orchestra"]
)
_PLACE_WORDS = frozenset(
    ["city", "county", "state", "states", "republic", "kingdom", "island", "islands", "mountain", "mountains", "river", "lake", "street", "road", "avenue", "north", "south", "east", "west", "new", "san", "santa", "saint", "st", "fort", "port", "park", "bay", "beach", "valley", "heights", "springs", "falls", "united", "africa", "america", "asia", "europe"]
)


def _looks_like_name(value: str) -> bool:
    tokens = value.split()
    if not 2 <= len(tokens) <= 4:
        return False
    if not all(_NAME_SHAPED.match(t) for t in tokens):
        return False
    if sum(1 for t in tokens if len(t.rstrip(".")) > 1) < 2:
        return False
    lowered = {t.lower().strip(".") for t in tokens}
    return not (lowered & _ORG_WORDS or lowered & _PLACE_WORDS)


_NER_OTHER = frozenset({"ORGANIZATION", "LOCATION", "NRP"})


_CUE_RECOGNIZERS = frozenset({"PersonCueRecognizer", "SpeakerLabelRecognizer", "GazetteerNameRecognizer"})


_TRAILING_UNIT = re.compile(rf"\s+{_UNIT}\.?$")


def trim_unit_words(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """The model reads "Mrs. Barbara Yudina Apt. 675" as PERSON "Barbara Yudina Apt"; overlapping the unit,
    the name would then be swallowed by the address. The unit word belongs to the address."""
    for r in results:
        if r.entity_type == "PERSON":
            m = _TRAILING_UNIT.search(text, r.start, r.end)
            if m and m.start() > r.start:
                r.end = m.start()
    return results


def prefer_cued_names(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """A name introduced by a cue ("my name is Siiri", "Mrs. Ayers") beats the model's ORG/GPE/DATE label
    for the same words: the cue is the stronger evidence, even though the model's score is higher."""
    cued = [r for r in results
            if r.entity_type == "PERSON"
            and (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY) in _CUE_RECOGNIZERS]
    if not cued:
        return results
    return [r for r in results
            if not (r.entity_type in _NER_OTHER | {"DATE_TIME"}
                    and any(c.start < r.end and r.start < c.end for c in cued))]


def retype_names(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """en_core_web_sm tags many two-word names from outside the English-speaking world as ORG or GPE
    ("Tiffany Kilfoyle", "Calquín Cazares"). A 2-4 word span of capitalised words with no company or place
    word in it is far more often a person: re-type it, with a lower score than a direct PERSON tag."""
    out = []
    for r in results:
        if r.entity_type in ("ORGANIZATION", "LOCATION", "NRP") and _looks_like_name(text[r.start : r.end]):
            r = make_result("PERSON", r.start, r.end, 0.7, "NameShapeRetyper", "NameShapeRetyper")
        out.append(r)
    return out


_LIST_ITEM = r"[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+(?:\s[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+)?"
_LIST = re.compile(rf"{_LIST_ITEM}(?:,\s+{_LIST_ITEM})*,?\s+(?:and|or|&)\s+{_LIST_ITEM}")
_ITEM = re.compile(_LIST_ITEM)


def coordinated_names(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """In "Kónya, Becker and Vasquez" or "Mary, Ariana, Isabel and Jodi", once one member is a PERSON the
    other capitalised members of the same list are too."""
    persons = [(r.start, r.end) for r in results if r.entity_type == "PERSON" and r.score >= 0.5]
    if not persons:
        return []
    out = []
    taken = [(r.start, r.end) for r in results if r.entity_type == "PERSON"]
    for m in _LIST.finditer(text):
        if not any(s < m.end() and m.start() < e for s, e in persons):
            continue
        for item in _ITEM.finditer(text, m.start(), m.end()):
            if item.group() in ("And", "Or"):
                continue
            if any(s < item.end() and item.start() < e for s, e in taken):
                continue
            out.append(make_result("PERSON", item.start(), item.end(), 0.6, "CoordinationPropagation",
                                   "CoordinationPropagation"))
    return out


_SPEAKER_NOT_NAMES = frozenset(
    ["note", "answer", "question", "q", "a", "user", "assistant", "system", "human", "ai", "bot", "agent", "customer", "subject", "date", "from", "to", "re", "cc", "fax", "phone", "mobile", "desk", "email", "e-mail", "address", "name", "title", "summary", "example", "input", "output", "step", "warning", "error", "tip", "source", "update", "edit", "ps", "response", "instruction", "context", "prompt", "completion", "hint", "solution", "explanation", "reason", "result", "results", "total", "price", "cost", "time", "location", "reference", "description", "comment", "comments", "feedback", "status", "office", "home", "work", "tel", "cell", "when", "where", "who", "what", "why", "how", "zip", "postcode", "directed", "written", "produced", "starring", "genre", "mission", "statement", "about", "overview", "objective", "skills", "experience", "education", "references", "birthday", "born", "age", "website", "url", "company", "organization", "employer", "position", "role", "department"]
)


_WORDISH = re.compile(r"(?:ive|tion|sion|ment|ness|ity|ics|ing|ure|ance|ence|ary|ory|ism|ogy|ship|ware|s)$")


class SpeakerLabelRecognizer(LocalRecognizer):
    """Transcript speaker labels at the start of a line ("Leverett: What a wife."), common in chat logs
    and scripts, excluding the usual non-name labels (Note:, Answer:, User:, Phone:)."""

    _LABEL = re.compile(r"(?m)^[ \t>*-]*([A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+(?: [A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+)?):[ \t]+\S")

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language,
                         name="SpeakerLabelRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if "PERSON" not in entities:
            return []
        out = []
        for m in self._LABEL.finditer(text):
            label = m.group(1)
            words = label.split()
            if any(w.lower() in _SPEAKER_NOT_NAMES for w in words) or label.isupper():
                continue
            if _WORDISH.search(words[-1]):  # "Qualitative:", "Requirements:", "Pricing:"
                continue
            out.append(make_result("PERSON", m.start(1), m.end(1), 0.6, self.name, self.id))
        # One "Label:" line is a heading; a transcript has at least two speaker lines.
        return out if len(out) >= 2 else []


class CaseInsensitiveIbanRecognizer(LocalRecognizer):
    """IBANs typed in lower case ("my iban is gb42nawi0445..."): the stock recognizer wants capitals.
    The ISO 7064 mod-97 check keeps random lower-case tokens out."""

    _CANDIDATE = re.compile(r"(?<![\w])[a-z]{2}\d{2}(?:\s?[a-z0-9]{4}){2,7}(?:\s?[a-z0-9]{1,4})?(?![\w])")

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["IBAN_CODE"], supported_language=supported_language,
                         name="CaseInsensitiveIbanRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if "IBAN_CODE" not in entities:
            return []
        out = []
        for m in self._CANDIDATE.finditer(text):
            value = m.group().replace(" ", "").upper()
            if not 15 <= len(value) <= 34:
                continue
            rearranged = value[4:] + value[:4]
            number = "".join(str(int(ch, 36)) for ch in rearranged)
            if int(number) % 97 == 1:
                out.append(make_result("IBAN_CODE", m.start(), m.end(), 1.0, self.name, self.id))
        return out


# --- gazetteer names ---------------------------------------------------------------------------------------

# Places that are also first names in nam_dict: alone they are the place far more often ("in Georgia").
_PLACE_NAMES = frozenset(
    """america argentina asia chad france georgia india iran israel jordan kenya mali syria carolina dakota
    montana virginia london paris vienna sydney adelaide victoria florence milan geneva austin dallas houston
    denver phoenix orlando savannah charlotte lincoln madison jackson cleveland eugene regina aurora troy
    chelsea camden brooklyn york hamilton lima santiago alberta sierra lourdes sofia africa europe china
    japan ireland holland italia roma berlin dublin boston memphis nashville atlanta kingston wellington
    washington cairo moscow delhi rio monte mont mount mt cape puerto porto costa lago isla lac""".split()  # noqa: SIM905
)
# Surname particles ("Willemine ten Pas", "Ana de Souza").
_PARTICLES = frozenset("van von der den ten ter de da di du del della dos das la le bin ibn al el".split())  # noqa: SIM905
# Capitalised words that make the words around them a place, an institution or an event, not a person.
_NOT_SURNAMES = _ORG_WORDS | _PLACE_WORDS | frozenset(
    """apt apartment suite unit flat street st avenue ave road rd lane drive way boulevard blvd court
    january february march april may june july august september october november december monday tuesday
    wednesday thursday friday saturday sunday day days week year night morning evening station airport
    hall house tower bridge square memorial cup award awards prize medal trophy league act war palace castle
    cathedral temple abbey monastery gallery theatre theater stadium arena gardens garden national royal
    modern festival conference series show museum island lake river mountains forest""".split()  # noqa: SIM905
)
# Words before a name that do not make it part of a longer proper noun ("Mrs. Ayers", "Dear Irenke").
_NAME_OPENERS = frozenset(
    """mr mrs ms mx dr prof sir madam mme mlle herr frau sr sra srta miss dear hi hello hey thanks thank
    regards cheers sincerely uncle aunt cousin""".split()  # noqa: SIM905
)
# NER labels that a lone gazetteer name inside them does not override ("German", "Genesis", "Hamlet"). A
# full name does override PRODUCT and WORK_OF_ART: the small model calls "Lily Nolan" a product.
_NOT_PERSON_LABELS = frozenset({"NORP", "PRODUCT", "WORK_OF_ART", "EVENT", "LAW", "LANGUAGE"})
_NOT_FULL_NAME_LABELS = frozenset({"NORP", "LAW", "LANGUAGE"})
_UNIT_WORDS = frozenset({"apt", "apartment", "suite", "unit", "flat"})
# Common-noun endings: "Mac Operating System", "Kia Motivation". Not "-s": Lucas, Persson, Dias.
_NOUNISH = re.compile(r"(?:tion|sion|ment|ness|ity|ing|ance|ence|ism|ogy|ship|ware)$")
_TOKEN = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+|['’](?!s\b)[^\W\d_]+)*\.?")
# "233 Erzsébet tér", "518 Árpád fejedelem útja": streets are named after people; the house number says which.
_HOUSE_NUMBER_BEFORE = re.compile(r"\d\s+$")
# "in Monroe", "from Dolores": a lone name after these is mostly a place named after someone.
_LOCATIVE = frozenset({"in", "from", "near", "outside", "inside", "across", "around", "via"})
# Matched at a position, never on a slice: a slice per candidate copies the rest of the text each time.
_DIGIT_AFTER = re.compile(r"\s*\d")
_LIST_GAP = re.compile(r"^\s*(?:,\s*)?(?:(?:and|or|&)\s+)?$")


class GazetteerNameRecognizer(LocalRecognizer):
    """Person names found through a first-name gazetteer (app/pii/gazetteer.py), token shape and context.

    en_core_web_sm misses or mislabels (ORG, GPE) many names from outside the English-speaking world:
    "My name is Akinori", "Irenke Sörös as a beneficiary", "Why is Natasja so impulsive?", signature
    blocks ("> Lina Artemova"). A known first name is evidence that does not depend on the model:

    * known first name + optional middle initial or particles + one or two capitalised surnames on the same
      line ("Csanád P Gere", "Willemine ten Pas"): 0.7;
    * a known first name alone, capitalised: 0.45 — under the 0.5 that lets a name spread to other mentions
      and list members, because a lone word is the weakest evidence here;
    * in a text written entirely in lower case ("follow up with patricia desrosiers"): the same on lower-case
      tokens, 0.5 for a full name, 0.45 alone.

    The English words and places among first names ("Will", "Grace", "Georgia", see gazetteer.py) never
    start a name here: where they are names, the model mostly finds them already. A name must not continue
    a longer proper noun ("New York Giants", "RCA Victor", "Zion National Park"), lie inside what the model
    calls a nationality, product, work or event, and a lone name must be attested as more than rare and not
    sit in a list of things that are not names ("Ford, Mercedes, Honda"). Results beat the model's
    ORG/GPE/NRP/DATE label for the same words (`prefer_cued_names`).
    """

    NAME = "GazetteerNameRecognizer"
    FULL_SCORE = 0.7
    LOWER_FULL_SCORE = 0.5
    SINGLE_SCORE = 0.45
    SINGLE_MIN_FREQUENCY = 1  # nam_dict's scale: 1 rare .. 13 extremely common, in at least one country

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language, name=self.NAME)

    def load(self) -> None:
        from spacy.lang.en.stop_words import STOP_WORDS

        from app.pii.gazetteer import common_word_names, first_names

        self._first = first_names()
        # Function words never start a name, whatever the gazetteer says ("An", "In", "Else").
        self._stop = frozenset(STOP_WORDS)
        self._never_first = self._stop | common_word_names() | _PLACE_NAMES | _PLACE_WORDS | _ORG_WORDS
        self._not_surname = _NOT_SURNAMES | frozenset(STOP_WORDS) | common_word_names()

    def analyze(self, text, entities, nlp_artifacts=None):
        if "PERSON" not in entities:
            return []
        lower_text = not any(c.isupper() for c in text)
        tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
        blocked_single, blocked_full = self._blocked_spans(nlp_artifacts)
        out = []
        i = 0
        while i < len(tokens):
            found = self._match(text, tokens, i, lower_text)
            if found is None:
                i += 1
                continue
            last, score = found
            start, end = tokens[i][0], tokens[last][1]
            if text[end - 1] == "." and not _is_initial(tokens[last][2]):
                end -= 1  # a sentence's full stop, not part of the name
            blocked = blocked_single if last == i else blocked_full
            if not any(s < end and start < e for s, e in blocked):
                out.append(make_result("PERSON", start, end, score, self.name, self.id))
            i = last + 1
        return out

    @staticmethod
    def _blocked_spans(nlp_artifacts) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        doc = getattr(nlp_artifacts, "tokens", None)
        if doc is None or not hasattr(doc, "ents"):
            return [], []  # pattern-only mode: no model labels to respect
        ents = [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]
        return ([(s, e) for s, e, label in ents if label in _NOT_PERSON_LABELS],
                [(s, e) for s, e, label in ents if label in _NOT_FULL_NAME_LABELS])

    @staticmethod
    def _cased(word: str, lower_text: bool) -> bool:
        if lower_text:
            return word.islower()
        return word[0].isupper() and (len(word) == 1 or not word.isupper())

    def _match(self, text: str, tokens: list, i: int, lower_text: bool) -> tuple[int, float] | None:
        word = tokens[i][2].rstrip(".")
        key = word.casefold()
        frequency = self._first.get(key)
        if frequency is None or key in self._never_first or not self._cased(word, lower_text):
            return None

        def joined(j: int) -> bool:
            # Tokens of one name are separated by spaces only: "> Lina Artemova\n> Irecycle" is a name
            # and then a company, "Lina, Artemova" two items.
            if j <= 0 or j >= len(tokens):
                return False
            gap = text[tokens[j - 1][1] : tokens[j][0]]
            return gap != "" and gap.isspace() and "\n" not in gap

        def capital(j: int) -> bool:
            return not lower_text and tokens[j][2][0].isupper()

        # Continuing a longer proper noun: "New York", "RCA Victor", "St George Illawarra Dragons"; but a
        # capitalised "The" or "Dear" opens a sentence or a letter, not a proper noun.
        if joined(i) and capital(i - 1):
            before = tokens[i - 1][2].rstrip(".").casefold()
            if before not in _NAME_OPENERS and before not in self._stop:
                return None
        if _HOUSE_NUMBER_BEFORE.search(text[max(0, tokens[i][0] - 8) : tokens[i][0]]):
            return None
        j = i + 1
        if joined(j) and (_is_initial(tokens[j][2]) or lower_text and len(tokens[j][2].rstrip(".")) == 1):
            j += 1  # middle initial
        while joined(j) and tokens[j][2].casefold() in _PARTICLES:
            j += 1
        if joined(j) and self._surname(tokens[j][2], lower_text):
            last = j
            # Compound surnames ("Maria Sánchez Pérez").
            if joined(last + 1) and self._surname(tokens[last + 1][2], lower_text):
                last += 1
            # "Irving S Wright Award", "Kansas City Chiefs"; an address label goes on with "Apt. 675".
            if (joined(last + 1) and capital(last + 1)
                    and tokens[last + 1][2].rstrip(".").casefold() not in _UNIT_WORDS):
                return None
            return last, (self.LOWER_FULL_SCORE if lower_text else self.FULL_SCORE)
        if len(key) < 3 or frequency < self.SINGLE_MIN_FREQUENCY:
            return None
        if joined(i + 1) and capital(i + 1):
            return None
        if _DIGIT_AFTER.match(text, tokens[i][1]):
            return None  # "Pier 39", "Mist 2."
        if joined(i) and tokens[i - 1][2].casefold() in _LOCATIVE:
            return None
        if self._in_list_of_things(text, tokens, i, lower_text):
            return None
        return i, self.SINGLE_SCORE

    def _in_list_of_things(self, text: str, tokens: list, i: int, lower_text: bool) -> bool:
        """"Ford, Chevrolet, Mercedes and Lexus": a lone first name in a list most of whose other items are
        not first names is one more thing of the same kind (brands here; nam_dict has Mercedes and Lexus)."""

        def item(k: int) -> bool:
            word = tokens[k][2]
            return (word.islower() if lower_text else word[0].isupper()) and word.casefold() not in self._stop

        def step(k: int, direction: int) -> int | None:
            # The next item of the list from item k: over a comma, or over "and"/"or"/"&" with or without one.
            n = k + direction
            if not 0 <= n < len(tokens):
                return None
            a, b = (n, k) if direction < 0 else (k, n)
            gap = text[tokens[a][1] : tokens[b][0]]
            if tokens[n][2] in ("and", "or"):
                n += direction
                if not 0 <= n < len(tokens):
                    return None
            elif "&" not in gap and "," not in gap:
                return None
            a, b = (n, k) if direction < 0 else (k, n)
            whole = text[tokens[a][1] : tokens[b][0]]
            if "\n" in whole or not _LIST_GAP.match(whole):
                return None
            return n if item(n) else None

        others = []
        for direction in (-1, 1):
            k = i
            while (n := step(k, direction)) is not None and len(others) < 20:
                others.append(tokens[n][2].rstrip(".").casefold())
                k = n
        if not others:
            return False
        names = sum(1 for o in others if o in self._first)
        return names * 2 < len(others)

    def _surname(self, word: str, lower_text: bool) -> bool:
        bare = word.rstrip(".")
        if len(bare) < 2 or not self._cased(bare, lower_text):
            return False
        key = bare.casefold()
        return key not in self._not_surname and not _NOUNISH.search(key)


def _is_initial(word: str) -> bool:
    bare = word.rstrip(".")
    return len(bare) == 1 and bare.isupper()


def custom_recognizers(language: str = "en", gazetteer: bool = True) -> list[EntityRecognizer]:
    recognizers: list[EntityRecognizer] = [
        PaymentCardRecognizer(language),
        LoosePhoneRecognizer(language),
        StreetAddressRecognizer(language),
        PersonCueRecognizer(language),
        SpeakerLabelRecognizer(language),
        CaseInsensitiveIbanRecognizer(language),
    ]
    if gazetteer:
        recognizers.append(GazetteerNameRecognizer(language))
    return recognizers
