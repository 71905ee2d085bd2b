"""Person-name recognizers: honorific and self-introduction cues, transcript speaker labels, and the
first-name gazetteer."""

from __future__ import annotations

import re

from presidio_analyzer import LocalRecognizer, Pattern, PatternRecognizer

from app.pii.recognizers.common import _CASE_SENSITIVE, _ORG_WORDS, _PLACE_WORDS, _UNIT, make_result

# --- person names ------------------------------------------------------------------------------------------

_NAME_TOKEN = r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zà-öø-ÿā-ž'’-]+"
_HONORIFIC = r"(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sir|Mme|Mlle|Herr|Frau|Sr|Sra|Miss|mr|mrs|ms|dr)"
_NAME = rf"(?!{_HONORIFIC}\b){_NAME_TOKEN}(?:[ \t]+(?:[A-Z]\.?[ \t]+)?(?!{_UNIT}){_NAME_TOKEN}){{0,2}}"


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
        # The answer to a question for a name, on the next turn of a chat ("Bot: What's the name on the
        # account? User: Eve Magrath").
        (r"(?i:(?:what(?:'s| is) (?:your (?:full )?name|the (?:full )?name (?:on|for|under) (?:the|your|this) \w+)\??|(?:your|the) (?:full )?name,? please\??|"
         r"who am i (?:speaking|talking) (?:to|with)\??)(?:\s*[a-z]+[ \t]*:|(?!\s*[a-z]+[ \t]*:)))"),
        r"(?i:starring)",
        r"(?i:played by)",
        r"(?i:married to)",
        r"(?i:(?:son|daughter|widow|wife|husband) of)",
        (r"(?i:(?:father|mother|grandfather|grandmother|brother|sister|son|daughter|husband|wife|uncle|aunt|"
         r"cousin|nephew|niece|friend|boss|neighbou?r|colleague) (?:was|is) (?:called|named))"),
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



_SPEAKER_NOT_NAMES = frozenset(
    ["note", "answer", "question", "q", "a", "user", "assistant", "system", "human", "ai", "bot", "agent", "customer", "subject", "date", "from", "to", "re", "cc", "fax", "phone", "mobile", "desk", "email", "e-mail", "address", "name", "title", "summary", "example", "input", "output", "step", "warning", "error", "tip", "source", "update", "edit", "ps", "response", "instruction", "context", "prompt", "completion", "hint", "solution", "explanation", "reason", "result", "results", "total", "price", "cost", "time", "location", "reference", "description", "comment", "comments", "feedback", "status", "office", "home", "work", "tel", "cell", "when", "where", "who", "what", "why", "how", "zip", "postcode", "directed", "written", "produced", "starring", "genre", "mission", "statement", "about", "overview", "objective", "skills", "experience", "education", "references", "birthday", "born", "age", "website", "url", "company", "organization", "employer", "position", "role", "department"]
)


_WORDISH = re.compile(r"(?:ive|tion|sion|ment|ness|ity|ics|ing|ure|ance|ence|ary|ory|ism|ogy|ship|ware|s)$")


class SpeakerLabelRecognizer(LocalRecognizer):
    """Transcript speaker labels at the start of a line ("Leverett: What a wife."), common in chat logs
    and scripts, excluding the usual non-name labels (Note:, Answer:, User:, Phone:)."""

    # After the colon: a space, or directly a quote or a letter ('Jordan:"I'm...'); never a digit or a
    # slash ("Time:10", "Http://").
    _LABEL = re.compile(
        r"(?m)^[ \t>*-]*([A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+(?: [A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]+)?):(?:[ \t]+\S|(?=[\"“'‘«]|[^\W\d_]))"
    )
    _QUOTED = re.compile(r"[ \t]*[\"“«]")

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
            result = make_result("PERSON", m.start(1), m.end(1), 0.6, self.name, self.id)
            out.append((result, bool(self._QUOTED.match(text, m.end(1) + 1))))
        # Three or more labels, none of them said twice and none holding a first name, are a list of fields
        # ("Access Modifier: private - ...", "Return Type: int - ..."), not people taking turns.
        from app.pii.gazetteer import first_names

        labels = [text[r.start : r.end] for r, _ in out]
        if len(labels) >= 3 and len(set(labels)) == len(labels) and not any(
                w.casefold() in first_names() for label in labels for w in label.split()):
            return []
        # One "Label:" line is a heading; a transcript has at least two speaker lines. A label that opens a
        # quotation ('Kalman: "Sure."') is speech even alone.
        if len(out) >= 2:
            return [r for r, _ in out]
        return [r for r, quoted in out if quoted]



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
    # Role nouns a ticket or a record puts before the person it is about (#15: "Customer Priya Raman
    # (priya.r@..., +1 ...) writes"). Capitalised at a sentence's start they read as the first word of a
    # longer proper noun, which kept the name out; the first name after them still has to be in the gazetteer.
    + """customer client patient caller user guest passenger applicant tenant""".split()  # noqa: SIM905
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
        upper_lines: dict[int, bool] = {}
        blocked_single, blocked_full = self._blocked_spans(nlp_artifacts)
        out = []
        i = 0
        while i < len(tokens):
            # Only a known first name starts a match: the line's case is looked up for those alone.
            if tokens[i][2].rstrip(".").casefold() not in self._first:
                i += 1
                continue
            mode = "lower" if lower_text else self._line_case(text, tokens[i][0], upper_lines)
            found = self._match(text, tokens, i, mode)
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
    def _line_case(text: str, pos: int, cache: dict[int, bool]) -> str:
        # "upper" for a token on a line written all in capitals ("PATIENT: JOHN SMITH"), else "mixed".
        if "\n" not in text:
            upper = cache.setdefault(0, sum(c.isalpha() for c in text) >= 4 and not any(c.islower() for c in text))
            return "upper" if upper else "mixed"
        start = text.rfind("\n", 0, pos) + 1
        upper = cache.get(start)
        if upper is None:
            end = text.find("\n", pos)
            line = text[start : end if end >= 0 else len(text)]
            upper = cache[start] = sum(c.isalpha() for c in line) >= 4 and not any(c.islower() for c in line)
        return "upper" if upper else "mixed"

    @staticmethod
    def _cased(word: str, mode: str) -> bool:
        if mode == "lower":
            return word.islower()
        if mode == "upper":
            return word.isupper()
        return word[0].isupper() and (len(word) == 1 or not word.isupper())

    def _match(self, text: str, tokens: list, i: int, mode: str) -> tuple[int, float] | None:
        word = tokens[i][2].rstrip(".")
        key = word.casefold()
        frequency = self._first.get(key)
        if frequency is None or key in self._never_first or not self._cased(word, mode):
            return None
        lower_text = mode == "lower"

        def joined(j: int) -> bool:
            # Tokens of one name are separated by spaces only: "> Lina Artemova\n> Irecycle" is a name
            # and then a company, "Lina, Artemova" two items.
            if j <= 0 or j >= len(tokens):
                return False
            gap = text[tokens[j - 1][1] : tokens[j][0]]
            return gap != "" and gap.isspace() and "\n" not in gap

        def capital(j: int) -> bool:
            # On an all-capitals line case says nothing about where a proper noun ends.
            return mode == "mixed" and tokens[j][2][0].isupper()

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
        if joined(j) and self._surname(tokens[j][2], mode):
            last = j
            # Compound surnames ("Maria Sánchez Pérez").
            if mode != "upper" and joined(last + 1) and self._surname(tokens[last + 1][2], mode):
                last += 1
            # "Irving S Wright Award", "Kansas City Chiefs"; an address label goes on with "Apt. 675".
            if (joined(last + 1) and capital(last + 1)
                    and tokens[last + 1][2].rstrip(".").casefold() not in _UNIT_WORDS):
                return None
            return last, (self.FULL_SCORE if mode == "mixed" else self.LOWER_FULL_SCORE)
        # A lone capitalised word on a shouted line is any word ("PLEASE CALL MAY"): full names only.
        if mode == "upper" or len(key) < 3 or frequency < self.SINGLE_MIN_FREQUENCY:
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

    def _surname(self, word: str, mode: str) -> bool:
        bare = word.rstrip(".")
        if len(bare) < 2 or not self._cased(bare, mode):
            return False
        key = bare.casefold()
        return key not in self._not_surname and not _NOUNISH.search(key)


def _is_initial(word: str) -> bool:
    bare = word.rstrip(".")
    return len(bare) == 1 and bare.isupper()

