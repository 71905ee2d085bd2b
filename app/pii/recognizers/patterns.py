"""Pattern recognizers: email, payment cards, phone numbers, street addresses, lower-case IBANs.

Scores are chosen so that a bare match of a loose shape stays below the default policy threshold (0.4) and
only a match with a context word ("call", "fax", "card") or a validated checksum gets through.
"""

from __future__ import annotations

import re
from functools import lru_cache

import tldextract
from presidio_analyzer import LocalRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import EmailRecognizer, NhsRecognizer, PhoneRecognizer

from app.pii.recognizers.common import _CASE_SENSITIVE, make_result

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
    _CARD_CUE = re.compile(r"(?i)\b(?:card|cc)\b(?:\s+(?:no\.?|number|num|#))?[\s:#.]*$")
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
            if not luhn_ok(digits):
                continue
            if not card_network_ok(digits):
                # Outside the issuer table (private-label, store and fleet cards, or a range we lack):
                # only a card word right before it ("credit card 0604 2607 0011") makes it one.
                if self._CARD_CUE.search(text, max(0, m.start() - 25), m.start()):
                    out.append(make_result("CREDIT_CARD", m.start(), m.end(), 0.6, self.name, self.id))
                continue
            # A 12-14 digit Luhn-valid number with a plausible prefix happens by chance 1 time in 10: keep it
            # under the context bar's reach but above the default threshold only with a context word.
            score = 0.9 if len(digits) >= 15 else 0.35
            out.append(make_result("CREDIT_CARD", m.start(), m.end(), score, self.name, self.id))
        return out


# --- phone numbers -----------------------------------------------------------------------------------------


# Words that name the number as something other than a phone. An unbroken digit run right after one
# of these ("order 4839201", "account number 1234567", "ID: 7712093") is an identifier, unless a word
# that only phones have (call, fax, mobile...) comes before it on the same line.
_IDENTIFIER = re.compile(
    r"(?i)\b(?:id|ids|identifier|order|account|acct|invoice|ticket|case|ref|reference|customer|client|member|"
    r"membership|employee|staff|student|patient|record|policy|claim|tracking|serial|sku|item|product|"
    r"transaction|confirmation|booking|reservation|receipt|no|nr|num|#)\b[\s.:#-]*(?:number|no\.?|num|#)?"
    r"[\s.:#-]*$"
)
_PHONE_ONLY = re.compile(r"(?i)\b(?:phone|call|tel|telephone|mobile|cell|fax|whatsapp|sms|dial|ring)\w*")


def identifier_before(text: str, start: int) -> bool:
    """True when the word right before `start` names an identifier and no phone-only word precedes it on
    the same line: the digits there are typed by that word, not by their count."""
    line_start = text.rfind("\n", 0, start) + 1
    before = text[max(line_start, start - 30) : start]
    return _IDENTIFIER.search(before) is not None and not _PHONE_ONLY.search(before)


class RegionPhoneRecognizer(PhoneRecognizer):
    """The stock libphonenumber recognizer, minus unbroken digit runs named as identifiers: libphonenumber
    reads "order 060426070011" as a phone number of some region."""

    # Five digits or more with at most a few separators between them, on one line. libphonenumber walks
    # the whole text once per region, which is most of this recognizer's cost, and on a text with no such
    # run the only numbers it can find are 4-digit years read as German short numbers ("in 1680").
    _DIGIT_RUN = re.compile(r"\d(?:[^\S\n]{0,3}[().\-/+]{0,2}[^\S\n]{0,2}\d){4,}")

    def analyze(self, text, entities, nlp_artifacts=None):
        if not self._DIGIT_RUN.search(text):
            return []
        out = []
        for r in super().analyze(text, entities, nlp_artifacts):
            if text[r.start : r.end].isdigit() and identifier_before(text, r.start):
                continue
            r.start, r.end = trim_unbalanced_parens(text, r.start, r.end)
            out.append(r)
        return out


def trim_unbalanced_parens(text: str, start: int, end: int) -> tuple[int, int]:
    """libphonenumber's matcher takes a bracket that opens the whole aside around a number ("User Sunita
    Rao (+1 (415) 555 0199)" gave "(+1 (415) 555 0199"): the bracket is the text's, not the number's. A
    leading "(" is dropped while the span opens more brackets than it closes, a trailing ")" while it
    closes more than it opens; "(415) 555 0199" keeps its area-code brackets."""
    value = text[start:end]
    while value.startswith("(") and value.count("(") > value.count(")"):
        value = value[1:].lstrip()
    while value.endswith(")") and value.count(")") > value.count("("):
        value = value[:-1].rstrip()
    new_start = text.find(value, start)
    return new_start, new_start + len(value)


class PhoneAwareNhsRecognizer(NhsRecognizer):
    """The stock NHS recognizer, minus ten digits that follow a country code ("+1 415 555 0199").

    Its only test is the mod-11 checksum, which about one ten-digit number in eleven passes, and a 3-3-4
    grouped US or Canadian number has the NHS shape. Its score (1.0) beat the loose phone's (0.5) for the
    same digits, so the demo's "+1 415 555 0199" came out as UK_NHS (#15). NHS numbers are written
    without a country prefix; after one the digits are a phone number, which the phone recognizers find.
    """

    _COUNTRY_CODE_BEFORE = re.compile(r"(?:\+|\b00)\d{1,3}[\t .-]?\(?[\t ]?$")

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        return [r for r in super().analyze(text, entities, nlp_artifacts, regex_flags)
                if not self._COUNTRY_CODE_BEFORE.search(text, max(0, r.start - 8), r.start)]


class LoosePhoneRecognizer(LocalRecognizer):
    """Digit groups shaped like a phone number, in any national format.

    libphonenumber (the stock PhoneRecognizer) only accepts numbers that are valid for one of the configured
    regions, so "(37) 788-063", "0494 92 82 32" or "01.84.17.61.18" from outside those regions are missed.
    A loose shape alone scores 0.3 (under the default threshold); a context word such as "call", "fax" or
    "mobile" within a few words lifts it over.
    """

    # Horizontal whitespace only: a number never continues on the next line. With `\s` here, a postcode
    # line and the phone line under it ("Hungary 34796\n(37) 788-063-Office") made one candidate, which
    # the line-break check then threw away whole, and the phone was never tried alone.
    _CANDIDATE = re.compile(
        r"(?<![\w+/.-])(?:\+|00)?\(?\d[\d().\t -]{5,22}\d(?:[\t ]?(?:x|ext\.?)[\t ]?\d{1,5})?(?![\w/]|[.-]\d)"
    )
    _DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
    _YEARS = re.compile(r"^(?:1[5-9]|20)\d\d\s?[-–/]\s?(?:1[5-9]|20)\d\d$")  # "2019-2020"
    # Checked on the raw text around the match rather than through Presidio's lemma enhancer: spaCy lists
    # "call" as a stop word, and the enhancer drops stop words from the context window.
    _CONTEXT = re.compile(
        r"(?i)\b(?:phone|call|tel|telephone|mobile|cell|fax|desk|office|contact|reach|answering|whatsapp|sms|"
        r"text|number|ring|dial|messag|sms|registered)\w*"
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
            if core.count("(") != core.count(")"):
                continue
            if len(digits) >= 13 and luhn_ok(digits) and card_network_ok(digits):
                continue
            international = raw.startswith(("+", "00"))
            grouped = bool(re.search(r"\d[\s().-]+\d", core))
            if not grouped and not international and identifier_before(text, start):
                continue
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
            rf"\b\d{{1,6}}[A-Za-z]?,?[ \t]+(?:{_CAP}[ \t]+){{0,4}}(?:{_STREET_WORDS})\b\.?",
            0.6,
        ),
        Pattern(
            "street suffix + number (continental)",
            rf"\b(?:{_CAP}[ \t]+){{0,2}}[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]*(?:{_STREET_SUFFIXES})[ \t]+\d{{1,5}}[a-zA-Z]?\b",
            0.6,
        ),
        Pattern(
            "street prefix + name + number",
            rf"\b(?:{_STREET_PREFIXES})[ \t]+(?:[\w'’.-]+[ \t]+){{0,4}}?\d{{1,5}}[a-zA-Z]?\b",
            0.55,
        ),
        Pattern(
            "number + capitalised words + number (continental, with house number first)",
            rf"\b(?!(?:1[5-9]|20)\d\d\b)\d{{2,6}}[ \t]+(?!{_MONTHS}\b)(?:{_CAP}[ \t]+){{1,3}}(?!(?:1[5-9]|20)\d\d\b)"
            rf"\d{{1,4}}[a-zA-Z]?\b",
            0.45,
        ),
        Pattern("unit", r"\b(?:Apt\.?|Apartment|Suite|Unit|Flat)[ \t]*#?[ \t]*\d{1,5}[A-Za-z]?\b", 0.5),
        # Typed in lower case ("12 oak st"), only with street words that are not also ordinary nouns after
        # a number ("2 hard drive", "3 best way", "1 first place").
        Pattern(
            "number + street (lower case)",
            r"\b\d{1,6}[a-z]?[ \t]+(?:[a-z][\w'’.-]*[ \t]+){1,3}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|"
            r"court|ct|terrace|parkway|pkwy|highway|hwy)\b\.?",
            0.5,
        ),
        Pattern("PO box", r"\b(?:P\.?[ \t]?O\.?[ \t]?Box|Postfach|Apartado)[ \t]+\d{1,7}\b", 0.6),
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

