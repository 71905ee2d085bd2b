"""Passes over the analyzer's results for PERSON: trimming, re-typing, and spreading a found name to its
other mentions and list members. engine.py runs them in order after the analyzer."""

from __future__ import annotations

import re
from functools import lru_cache

from presidio_analyzer import RecognizerResult

from app.pii.recognizers.common import _ORG_WORDS, _PLACE_WORDS, _UNIT, make_result

_POSSESSIVE = re.compile(r"['’]s?$")
_TITLE_WORDS = frozenset(
    """uncle aunt saint king queen prince princess lord lady sir madam doctor professor captain general
    president senator judge father mother brother sister""".split()  # noqa: SIM905
)


def propagate_mentions(text: str, results: list[RecognizerResult], entity_type: str = "PERSON") -> list:
    """Once a name is found anywhere in a text, find its other mentions too (the model often tags a name on
    one mention and not the next; the surname alone later is still the same person). Returns the full
    result list: a mention the model tagged as a place or an organisation is re-typed."""
    names: set[str] = set()
    lower_text = not any(c.isupper() for c in text)
    for r in results:
        if r.entity_type != entity_type or r.score < 0.5:
            continue
        # "Pinabel Marcil's Cautionary Tales ... early Marcil": the later mention has no possessive.
        value = _POSSESSIVE.sub("", text[r.start : r.end].strip())
        # Lower-case spans are where the model is least sure; spreading one would spread a false positive,
        # except in a text written all in lower case, where a full name is as good as a capitalised one.
        if len(value) < 3 or not (value[0].isupper() or lower_text and len(value.split()) > 1):
            continue
        names.add(value)
        # The surname alone is the usual later mention; first names and title words ("Uncle Walter")
        # would spread far more false positives than they catch.
        last = value.split()[-1]
        # Nor an ordinary word: "Spark Pools" is no reason to scrub every "Pools".
        if (len(value.split()) > 1 and len(last) >= 4 and (last[0].isupper() or lower_text)
                and last.lower() not in _TITLE_WORDS and not _ordinary_words(last)):
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


_CUE_RECOGNIZERS = frozenset({"PersonCueRecognizer", "SpeakerLabelRecognizer", "GazetteerNameRecognizer",
                              "SubjectVerbNameRecognizer", "LowerCaseCueRecognizer",
                              "VocativeNameRecognizer"})


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


# Words that open a region, not a name ("Southern Tunisia", "Greater Manchester").
_REGION_WORDS = frozenset("southern northern eastern western central upper lower greater inner outer".split())  # noqa: SIM905
# What stands before a company or a place, not a person, when the name has no first name to say otherwise
# ("at Walk Score", "became Berkery Noyes Mandasoft", "the Spokane Braves").
_BEFORE_THING = re.compile(r"(?i)\b(?:the|at|became|become|becomes|joined|visit|visited|visiting)\s+$")


def _name_evidence(text: str, start: int, end: int) -> bool:
    """Whether a capitalised 2-4 word span the model typed ORG/GPE/NORP is better read as a person's name.

    The shape alone was right 4 times in 29 on the tune part of bench.pii_eval and re-typed "Microsoft Corporation",
    "Chicago Bulls" and "Credit Karma" on clean text. A name is made of names: no token may be an ordinary
    English word (common_words.txt) or a public place unless it is also a known first name ("Florence
    Nightingale" stays in), none a region word; and without a known first name at its head, the words
    before it must not be those that stand before a company or a place."""
    from app.pii.allow import public_places
    from app.pii.gazetteer import common_word_names, common_words, first_names

    value = text[start:end]
    if "\n" in value or not _looks_like_name(value):
        return False
    given, ordinary, places, name_words = first_names(), common_words(), public_places(), common_word_names()
    tokens = [_POSSESSIVE.sub("", t).strip(".").casefold() for t in value.split()]
    # After a first name that is no word and no place, a surname may be a word ("Kenny Baker").
    head = tokens[0] in given and tokens[0] not in name_words and tokens[0] not in places
    for k, t in enumerate(tokens):
        if t in _REGION_WORDS or t in places and (t not in given or t in name_words):
            return False
        if len(t) > 1 and t in ordinary and (t not in given or t in name_words) and not (head and k > 0):
            return False
    # A plural of an ordinary word at the end names a team or a group ("Chicago Bulls", "Milwaukee Admirals").
    if tokens[-1].endswith("s") and tokens[-1][:-1] in ordinary:
        return False
    head = head or tokens[0] in given and tokens[0] not in name_words
    return head or not _BEFORE_THING.search(text, max(0, start - 12), start)


def _ordinary_words(value: str) -> bool:
    """Every word of `value` is an ordinary English word (common_words.txt) and none a known first name
    (names that are also words, "Rose", "Mark", count as words): a thing, not a name."""
    from app.pii.gazetteer import common_word_names, common_words, first_names

    given, ordinary, name_words = first_names(), common_words(), common_word_names()
    # A token with no letter ("-" of a list item, "- Here") is punctuation, not a word either way.
    tokens = [t for t in (_POSSESSIVE.sub("", w).strip(".,;:!?()\"'").casefold() for w in value.split())
              if any(c.isalpha() for c in t)]
    return bool(tokens) and all(t in ordinary and (t not in given or t in name_words) for t in tokens)


@lru_cache(maxsize=1)
def _function_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


def drop_ordinary_words(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """The small model calls ordinary words people ("Cautionary Tales", "Discipline", "Freezing Rain")
    and, in mixed-case text, lower-case phrases ("keto diet", "upsell"). A model-only PERSON made of
    ordinary words (`_ordinary_words`), or written in lower case in a text that has capitals without a
    first name at its head, is dropped. A cue before it keeps it ("Mrs. Baker"); the cue recognizers'
    own results are not weighed here. So is one led by a single lower-case letter ("z. The"): a variable,
    not an initial. So is a model LOCATION of one ordinary word ("Mother", "Nurse",
    "Payload"); places of several ("Salt Creek", "Mill Valley") stay: they can be where someone lives. A
    model LOCATION in lower case in a text with capitals ("the atlas") is dropped too."""
    from app.pii.allow import cued
    from app.pii.gazetteer import first_names

    given = first_names()
    has_capitals = any(c.isupper() for c in text)
    out = []
    for r in results:
        model = (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY) == "SpacyRecognizer"
        if (model and r.entity_type == "LOCATION" and " " not in text[r.start : r.end].strip()
                and _ordinary_words(text[r.start : r.end]) and not cued(text, r.start)):
            continue
        # A lower-case place in a text that has capitals is a common noun ("look it up in the atlas":
        # en_core_web_md's LOCATION); lower-case records have no capitals and keep theirs.
        if (model and r.entity_type == "LOCATION" and has_capitals
                and not any(c.isupper() for c in text[r.start : r.end]) and not cued(text, r.start)):
            continue
        if model and r.entity_type == "PERSON":
            value = text[r.start : r.end]
            # Any first name, even one that is also a word ("Rose Hunter", "Will Cook"), keeps a span.
            if (_ordinary_words(value) and not cued(text, r.start)
                    and not any(w.strip(".,;:!?()\"'").casefold() in given for w in value.split())):
                continue
            if (has_capitals and not any(c.isupper() for c in value)
                    and value.split()[0].strip(".,;:!?()\"'").casefold() not in given):
                continue
            # One function word alone ("- Here x++ will..."; nam_dict lists "Here", "Just", "So" as rare first
            # names) is no name without a cue; in a name of several words it still counts ("Will Cook").
            words = [w for w in (t.strip(".,;:!?()\"'").casefold() for t in value.split()) if any(c.isalpha() for c in w)]
            if len(words) == 1 and words[0] in _function_words() and not cued(text, r.start):
                continue
            # One lower-case letter is a variable ("the value of z. The code..."): initials are capitals.
            # en_core_web_md, without the parser's sentence ends, runs such a span into the next sentence.
            head = value.split()[0].strip(".,;:!?()\"'")
            if len(head) == 1 and head.islower():
                continue
        out.append(r)
    return out


def retype_names(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """en_core_web_sm tags many two-word names from outside the English-speaking world as ORG or GPE
    ("Tiffany Kilfoyle", "Calquín Cazares"). Where the span's words support a name (`_name_evidence`),
    re-type it, with a lower score than a direct PERSON tag."""
    out = []
    for r in results:
        if r.entity_type in _NER_OTHER and _name_evidence(text, r.start, r.end):
            r = make_result("PERSON", r.start, r.end, 0.7, "NameShapeRetyper", "NameShapeRetyper")
        out.append(r)
    return out


_LIST_ITEM = r"[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+(?:\s[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+)?"
_LIST = re.compile(rf"{_LIST_ITEM}(?:,\s+{_LIST_ITEM})*,?\s+(?:and|or|&)\s+{_LIST_ITEM}")
_ITEM = re.compile(_LIST_ITEM)


# Plural nouns that only people are: a list right after one is a list of people ("our 3 founders: Kónya,
# Becker and Vasquez"), whatever the model makes of each member. Not "partners", "clients", "sponsors":
# companies are those too.
_PEOPLE_NOUNS = (
    r"founders|co-founders|cofounders|authors|co-authors|children|kids|sons|daughters|brothers|sisters|"
    r"siblings|parents|grandparents|grandchildren|cousins|friends|colleagues|coworkers|co-workers|witnesses|"
    r"employees|students|classmates|roommates|teammates|neighbou?rs|nurses|teachers|guests"
)
_PEOPLE_CUE = re.compile(
    rf"(?i)\b(?:{_PEOPLE_NOUNS})(?:\s*:|\s+(?:are|were|include|includes|included|named|called))?\s*$"
)


def coordinated_names(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """In "Kónya, Becker and Vasquez" or "Mary, Ariana, Isabel and Jodi", once one member is a PERSON, or
    the list follows a noun for people ("founders:"), the other capitalised members of the same list are
    too. After the noun, a member the model labelled ORG/GPE/NORP is re-typed in place (its label would
    otherwise win the overlap on score); the members no result covered are returned."""
    persons = [(r.start, r.end) for r in results if r.entity_type == "PERSON" and r.score >= 0.5]
    lists = []
    for m in _LIST.finditer(text):
        cued = _PEOPLE_CUE.search(text, max(0, m.start() - 40), m.start()) is not None
        if cued:
            lists.append((m, cued))
            continue
        # Without the noun, a long list in which one member in two or fewer is a name is a list of things
        # with a name-like member ("Newton, Natick, Framingham, Wellesley, Dedham, and Needham", the
        # regions of a game, a list of companies): the one PERSON is the odd one out, not the rule.
        items = [i for i in _ITEM.finditer(text, m.start(), m.end()) if i.group() not in ("And", "Or")]
        named = sum(1 for i in items if any(s < i.end() and i.start() < e for s, e in persons))
        if named and not (len(items) >= 5 and 2 * named < len(items)):
            lists.append((m, cued))
    if not lists:
        return []
    out = []
    taken = [(r.start, r.end) for r in results if r.entity_type == "PERSON"]
    for m, cued in lists:
        for item in _ITEM.finditer(text, m.start(), m.end()):
            if item.group() in ("And", "Or"):
                continue
            if any(s < item.end() and item.start() < e for s, e in taken):
                continue
            # Only the noun cue outranks the model's label: one PERSON in a list of countries is the
            # model's mistake more often than the countries are.
            other = [r for r in results if r.entity_type in _NER_OTHER and r.start < item.end()
                     and item.start() < r.end]
            # Without the noun, a member the model calls a place or an organisation, or one made of
            # ordinary words, is what the list is about ("Natick, Framingham and Wellesley", "Salad,
            # Honey and Whey" beside one mislabelled PERSON).
            if not cued and (other or _ordinary_words(item.group())):
                continue
            if other:
                for r in other:
                    r.entity_type = "PERSON"
                    r.recognition_metadata[RecognizerResult.RECOGNIZER_NAME_KEY] = "CoordinationPropagation"
                continue
            out.append(make_result("PERSON", item.start(), item.end(), 0.6, "CoordinationPropagation",
                                   "CoordinationPropagation"))
    return out
