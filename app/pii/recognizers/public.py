"""Under `public_entities: keep`: what the text itself says about a found name or place, beyond the lists.

* **An encyclopedic lede**: a full name followed by a lifespan or birth note in brackets and "is"/"was"
  ("John Davison Rockefeller Sr. (July 8, 1839 – May 23, 1937) was an American business magnate"), or by
  "is/was a(n) <nationality>" ("Muhammad Ejaz Shafi is a Pakistani politician"). That is how a reference
  work opens an article about someone public; a support ticket, a clinical note or a form does not
  describe its subject that way. The name is kept, and so are its other mentions in the text (the
  surname alone later, a possessive).
* **Things named after people or places**: a span whose last word names an award, an institution, a
  building or a vehicle pass ("Daniel J. Epstein Engineering Management Award", "Austin E. Lathrop High
  School", "Billy Graham Library") names the thing, not a person; a model place of ordinary words after
  "the" ("the Upper East Side", "the Northern Lights", "the Underground Railroad") is a named area or
  thing, not anyone's address.

A cue always wins ("Dear Mr. Bogosian", "my name is ...", speaker labels): those results never reach here
as candidates, and a name a cue found anywhere in the text is never kept by these rules.
"""

from __future__ import annotations

import re

from presidio_analyzer import RecognizerResult

# A bracket right after the name holding a year or a birth or death word, then the verb of a definition:
# "(born 1961) is", "(24 November 1963 – 28 May 2018) was", "(1858–1929) was", "(née Smith; born ...) is".
_LEDE_BRACKET = re.compile(
    r"\s*\((?=[^()\n]{0,160}\))(?=[^()\n]*(?:\b(?:born|died|b\.|d\.|née|nee|c\.|circa)\s|\b(?:1[0-9]|20)\d\d\b))"
    r"[^()\n]*\)",
)
# "is/was a(n) [former|retired...] <nationality>": the nationality is the model's NORP right after.
_DEFINITION = re.compile(
    r"\s*,?\s*(?:is|was)\s+(?:an?|the)\s+(?:(?:former|retired|late|famous|renowned|well-known|professional|"
    r"prominent|noted|leading|legendary|celebrated|contemporary|modern|medieval|ancient|classical)\s+)*"
)
# "Shivaji Rao Gaikwad, known professionally as Rajinikanth, is an Indian actor": the description comes after
# an aside.
_ASIDE = re.compile(r",\s+(?:known|better known|also known|professionally known)\s+(?:professionally\s+)?as\s+"
                    r"[^,\n]{1,60},")

# A nationality where the model gave none (the allow list may have taken its NORP result first): a
# capitalised adjective with a demonym's ending ("American", "Pakistani", "Scottish", "Japanese").
_DEMONYM = re.compile(r"[A-Z][a-z]+(?:an|ian|ese|ish|i|ic|ch)\b")

# Only whitespace, a quote or a sentence end before the name: a lede opens its sentence, and a role noun
# or a title before the name ("Patient John Miller", "Dear Mr. Bogosian") means it does not.
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s|\n)[\s\"'“‘*#>-]*$")
_WORD = re.compile(r"\s*([\w-]+)")
_STATUS_NOUNS = frozenset("""citizen citizens national nationals resident residents native immigrant emigrant
refugee expat expatriate student patient customer client woman man girl boy child person living""".split())  # noqa: SIM905

_CUED = frozenset({"PersonCueRecognizer", "SpeakerLabelRecognizer", "LowerCaseCueRecognizer",
                   "SubjectVerbNameRecognizer", "PersonRecordRecognizer", "VocativeNameRecognizer"})
_POSSESSIVE = re.compile(r"['’]s?$")


def _name(r: RecognizerResult) -> str:
    return (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY, "")


def _lede(text: str, r: RecognizerResult, nrp_starts: set[int]) -> tuple[int, int] | None:
    """The stretch of text after the name that makes it a lede (an optional bracket, an optional aside,
    "is/was a(n) <nationality> <what they do>"), or None. The name must open its sentence and be a full
    name: one word ("Harry") is too little to go on, and a lede names its subject in full first."""
    value = text[r.start : r.end].strip()
    if len(value.split()) < 2 or not _SENTENCE_START.search(text, max(0, r.start - 6), r.start):
        return None
    end = r.end
    bracket = _LEDE_BRACKET.match(text, end)
    if bracket:
        end = bracket.end()
    aside = _ASIDE.match(text, end)
    if aside:
        end = aside.end()
    m = _DEFINITION.match(text, end)
    if not m or not (m.end() in nrp_starts or _DEMONYM.match(text, m.end())):
        return None
    # "is a German citizen", "was a Canadian resident": a status anyone has, said in forms too.
    after = _WORD.match(text, m.end())
    nxt = _WORD.match(text, after.end()) if after else None
    if nxt and nxt.group(1).casefold() in _STATUS_NOUNS:
        return None
    return r.end, m.end()


# Born this long ago, a person is dead, and has been for 50 years even at a hundred: outside what data
# protection law covers (the GDPR does not apply to the dead; HIPAA protects a decedent's records for 50
# years). Died this long ago, the same.
_BORN_BEFORE_YEARS = 150
_DIED_BEFORE_YEARS = 50
_BORN = re.compile(r"\s+(?:was|is)\s+born\b[^.\n]{0,40}?\b(1\d{3})\b")
_YEAR = re.compile(r"\b(1\d{3}|20\d\d)\b")


def _long_dead(text: str, r: RecognizerResult) -> tuple[int, int] | None:
    """A full name the text dates beyond the reach of privacy law: "Georg Friedrich Parrot was born on July
    15, 1767", "Thomas Jefferson (April 13, 1743 – July 4, 1826)". Returns the dating stretch, or None."""
    import datetime

    value = text[r.start : r.end].strip()
    if len(value.split()) < 2:
        return None
    now = datetime.date.today().year
    m = _LEDE_BRACKET.match(text, r.end)
    if m:
        years = [int(y) for y in _YEAR.findall(m.group())]
        if not years:
            return None
        lifespan = len(years) >= 2 and "born" not in m.group().casefold()
        if years[0] <= now - _BORN_BEFORE_YEARS or lifespan and years[-1] <= now - _DIED_BEFORE_YEARS:
            return m.start(), m.end()
        return None
    m = _BORN.match(text, r.end)
    if m and int(m.group(1)) <= now - _BORN_BEFORE_YEARS:
        return m.start(), m.end()
    return None


_FULL_BEFORE = r"(?:[A-ZÀ-ÖØ-ÞĀ-Ž][\w.'’-]*\s+){1,3}"


def _listed_elsewhere(text: str, r: RecognizerResult) -> bool:
    """A lone word ("Jefferson") that the text also writes as the last word of a listed public figure's
    full name ("Thomas Jefferson (April 13, 1743 – July 4, 1826) was..."): the list kept the full name, and
    the later mention is the same person."""
    from app.pii.allow import normalise, public_figures

    word = _POSSESSIVE.sub("", text[r.start : r.end].strip())
    if " " in word or len(word) < 3 or not word[:1].isupper():
        return False
    figures = public_figures()
    for m in re.finditer(_FULL_BEFORE + re.escape(word) + r"(?!\w)", text):
        words = m.group().split()
        if any(normalise(" ".join(words[k:])) in figures for k in range(len(words) - 1)):
            return True
    return False


def keep_public_figures(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Drop the PERSON results of names the text describes as a reference work describes a public figure
    (`_lede`), with every other PERSON mention of the same name or its surname."""
    persons = [r for r in results if r.entity_type == "PERSON"]
    if not persons:
        return results
    from app.pii.allow import cued

    nrp_starts = {r.start for r in results if r.entity_type == "NRP"}
    public: set[str] = set()
    ledes: list[tuple[int, int]] = []
    for r in persons:
        if _name(r) in _CUED or cued(text, r.start):
            continue
        if _listed_elsewhere(text, r):
            public.add(_POSSESSIVE.sub("", text[r.start : r.end].strip()))
            continue
        lede = _lede(text, r, nrp_starts) or _long_dead(text, r)
        if lede:
            ledes.append(lede)
            value = _POSSESSIVE.sub("", text[r.start : r.end].strip())
            public.add(value)
            words = value.split()
            public.update(w for w in (words[0], words[-1]) if len(w) > 2)
    if not public:
        return results
    # A cue anywhere for the same words says this text treats them as a private person after all.
    cued_names = {_POSSESSIVE.sub("", text[r.start : r.end].strip()) for r in persons
                  if _name(r) in _CUED or cued(text, r.start)}
    if cued_names & public or any(w in public for c in cued_names for w in c.split()):
        return results
    # The birth date in the lede's bracket is the public figure's too.
    return [r for r in results
            if not (r.entity_type == "PERSON" and _POSSESSIVE.sub("", text[r.start : r.end].strip()) in public)
            and not (r.entity_type == "DATE_OF_BIRTH" and any(a <= r.start and r.end <= b for a, b in ledes))]


# The last word of a thing named after someone or somewhere: "the Donald Brittain Award", "Austin E.
# Lathrop High School", "Billy Graham Library", "Shinkansen Rail Pass". Surnames that are also such words
# ("Hall", "Park", "Church", "Tower"... are surnames too) are left out; the rest are not names people carry.
_THING_HEADS = frozenset("""
award awards prize prizes trophy medal cup championship championships tournament league
school academy university college library museum gallery hospital cathedral basilica stadium arena
speedway airport station bridge tunnel highway expressway railway railroad pass initiative program
programme foundation institute memorial monument festival fellowship scholarship lecture
theorem equation principle paradox effect syndrome disease law act treaty doctrine
""".split())  # noqa: SIM905 (a word list reads better as text)


_COMPASS = frozenset("""north south east west northern southern eastern western central upper lower middle
northeast northwest southeast southwest inner outer greater""".split())  # noqa: SIM905


def _plain_words(words: list[str]) -> bool:
    """Every word is an ordinary English word (or its plural, or a compass word) and none a first name
    that is no word: "Upper East Side", "Northern Lights"; not "Salt Lake Jennifer"."""
    from app.pii.gazetteer import common_word_names, common_words, first_names

    ordinary, given, name_words = common_words(), first_names(), common_word_names()
    for w in words:
        k = w.casefold()
        if k in _COMPASS:
            continue
        if not (k in ordinary or k.endswith("s") and k[:-1] in ordinary) or (k in given and k not in name_words):
            return False
    return True


def drop_named_things(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """A PERSON or LOCATION span from the model or the gazetteer whose last capitalised word names a thing
    (`_THING_HEADS`) is that thing; a model LOCATION of ordinary words after "the" ("the Upper East Side",
    "the Northern Lights") names an area or a thing, not an address. Cued results are never dropped."""
    from app.pii.allow import cued

    out = []
    for r in results:
        source = _name(r)
        if r.entity_type in ("PERSON", "LOCATION") and source not in _CUED and not cued(text, r.start):
            value = text[r.start : r.end].strip()
            words = [w.strip(".,;:!?()\"'") for w in value.split()]
            words = [w for w in words if w]
            if (len(words) >= 2 and words[-1][:1].isupper() and words[-1].casefold() in _THING_HEADS
                    and source in ("SpacyRecognizer", "GazetteerNameRecognizer", "NameShapeRetyper",
                                   "MentionPropagation")):
                continue
            if (r.entity_type == "LOCATION" and source == "SpacyRecognizer" and len(words) >= 2
                    and (words[0].casefold() == "the" or text[max(0, r.start - 4) : r.start].casefold() == "the ")):
                rest = [w for w in words if w.casefold() != "the"]
                if rest and all(w[:1].isupper() for w in rest) and _plain_words(rest):
                    continue
        out.append(r)
    return out
