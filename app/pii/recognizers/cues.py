"""Cue recognizers that do not need a capital or a known first name: a verb only people take ("Ciset lives
on ..."), a self-introduction before a lower-case name ("my name is vitoria"), and vocatives, greetings and
role titles before an unknown name ("Warrane, can I ...", "Hi Siiri,", "Officer Adomo"). The word itself
must not be an ordinary English word (app/pii/data/common_words.txt, built from instruction data by
scripts/build_common_words.py)."""

from __future__ import annotations

import itertools
import re

from presidio_analyzer import LocalRecognizer

from app.pii.recognizers.common import _ORG_WORDS, _PLACE_WORDS, make_result

# Verbs that only a person is the subject of, right after a name at the start of a sentence: "Ciset lives
# on Rua Mina 50", "Ley began writing as a teenager", "Csanád P Gere lives at ...". The cue is the verb,
# not the word, so it holds for names no gazetteer or model knows.
_PERSON_VERB = re.compile(
    r"[ \t]+(?:lives|lived|resides|resided)[ \t]+(?:on|at|in|with|near)\b|[ \t]+was[ \t]+born\b"
    r"|[ \t]+grew[ \t]+up\b|[ \t]+passed[ \t]+away\b|[ \t]+began[ \t]+(?:writing|(?:her|his)[ \t]+career)\b"
    # Said or done to someone else: "Duqyaha shouted at Janet", "Ilse whispered to her brother".
    r"|[ \t]+(?:shouted|yelled|screamed|whispered|winked|waved|nodded|smiled|glared|sneered|snapped)[ \t]+"
    r"(?:at|to)\b"
    r"|[ \t]+spent[ \t]+(?:a|an|one|two|three|several|her|his)[ \t]+(?:year|years|month|months|summer)\b"
)
_SENTENCE_END = re.compile(r"(?<!\b[A-Z])[.!?:;]\s+|[,\"“”()]\s*")
_LEAD = re.compile(r"[ \t>*\-\"“'‘]*")
_KIN_AND_ROLES = frozenset(
    """mother father mom dad mum grandfather grandmother grandma grandpa brother sister son daughter
    husband wife uncle aunt cousin friend boss neighbor neighbour everyone someone somebody nobody
    everybody anyone teacher doctor author writer artist family thanks thank regards cheers hi hello hey
    dear sincerely""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[^\W\d_][^\W\d_'’-]*(?:[-'’][^\W\d_]+)*")


class _StopWords:
    def load(self) -> None:
        from spacy.lang.en.stop_words import STOP_WORDS

        from app.pii.gazetteer import common_word_names

        self._not_name = frozenset(STOP_WORDS) | common_word_names() | _KIN_AND_ROLES | _ORG_WORDS | _PLACE_WORDS

    def _name_word(self, word: str, lower: bool) -> bool:
        if len(word) < 2 or word.casefold() in self._not_name:
            return False
        return word.islower() if lower else (word[0].isupper() and not word.isupper())


class SubjectVerbNameRecognizer(_StopWords, LocalRecognizer):
    """A one-to-three-word name opening a sentence and followed by a verb only people take (_PERSON_VERB).
    In a text written all in lower case the name is lower case too ("bártová began writing")."""

    NAME = "SubjectVerbNameRecognizer"

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language, name=self.NAME)

    def analyze(self, text, entities, nlp_artifacts=None):
        if "PERSON" not in entities:
            return []
        lower = not any(c.isupper() for c in text)
        out = []
        for m in _PERSON_VERB.finditer(text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            prefix = text[line_start : m.start()]
            # The sentence the verb is in: after the last full stop that does not end an initial ("P.").
            cut = 0
            for b in _SENTENCE_END.finditer(prefix):
                cut = b.end()
            lead = _LEAD.match(prefix, cut)
            start = line_start + lead.end()
            tokens = text[start : m.start()].split()
            initials = [t for t in tokens if len(t.rstrip(".")) == 1 and t[0].isupper()]
            real = [t for t in tokens if t not in initials]
            if not 1 <= len(real) <= 3 or not tokens or tokens[0] in initials or len(initials) > 1:
                continue
            if not all(_WORD.fullmatch(t) and self._name_word(t, lower) for t in real):
                continue
            out.append(make_result("PERSON", start, m.start(), 0.6, self.name, self.id))
        return out


# Cues after which a lower-case word is a name ("my name is vitoria", "her maiden name is nyberg"): the
# possessive makes it a person's name, not a file's or a field's ("the name is required").
_STRONG_CUE = re.compile(
    r"(?i)\b(?:(?:my|his|her|their|your|our)(?:\s+(?:maiden|first|last|full|middle|real|nick))?\s*name\s+is|"
    r"i\s+am\s+called|i'm\s+called)[ \t]+"
)
# Weaker cues: the word after them must be a known first name or carry a letter English does not use
# ("sometimes people call me višeslav"); "call me tomorrow" stays.
_WEAK_CUE = re.compile(
    r"(?i)\b(?:call\s+me|i\s+am|i'm|this\s+is|dear|hi|hello|hey|speak\s+(?:to|with)|ask\s+for|named|"
    r"called|signed|regards|thanks)[ \t,]+"
)


class LowerCaseCueRecognizer(_StopWords, LocalRecognizer):
    """Names written in lower case after a self-introduction or greeting. PersonCueRecognizer wants a
    capital; people typing fast, chat logs and record-linkage dumps do not use one."""

    NAME = "LowerCaseCueRecognizer"

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language, name=self.NAME)

    def load(self) -> None:
        super().load()
        from app.pii.gazetteer import first_names

        self._first = first_names()

    def analyze(self, text, entities, nlp_artifacts=None):
        if "PERSON" not in entities:
            return []
        out = []
        for cue, strong in ((_STRONG_CUE, True), (_WEAK_CUE, False)):
            for m in cue.finditer(text):
                words = list(itertools.islice(_LOWER_WORDS.finditer(text, m.end()), 3))
                span = []
                for w in words:
                    expected = span[-1].end() + 1 if span else m.end()
                    if w.start() != expected or not self._name_word(w.group(), lower=True):
                        break
                    span.append(w)
                if not span:
                    continue
                first = span[0].group()
                if not strong and first not in self._first and first.isascii():
                    continue
                if not strong:
                    span = span[:2]  # first name and surname; a third word is the sentence going on
                out.append(make_result("PERSON", span[0].start(), span[-1].end(), 0.6, self.name, self.id))
        return out


_LOWER_WORDS = re.compile(r"[^\W\d_][\w'’-]*")


# Words that open a greeting or a sign-off, and the titles of a role used as a form of address. After
# one of them, a capitalised word that is neither an ordinary word nor a stop word is a name.
_GREETING = (r"(?:hi|hello|hey|dear|thanks|thank\s+you|cheers|bye|goodbye|welcome|congratulations|congrats|"
             r"good\s+(?:morning|afternoon|evening|night)|happy\s+birthday|sorry|attn|attention|cc)")
_ROLE = (r"(?:officer|detective|det|nurse|coach|agent|sergeant|sgt|lieutenant|lt|captain|capt|professor|"
         r"pastor|rabbi|imam|reverend|rev|judge|uncle|aunt|auntie|grandma|grandpa|granny|cousin|nana)")
_GREETING_NAME = re.compile(rf"(?i:\b{_GREETING}),?[ \t]+(?=[A-ZÀ-ÖØ-ÞĀ-Ž])|(?i:\b{_ROLE})\.?[ \t]+(?=[A-ZÀ-ÖØ-ÞĀ-Ž])")
# A name at the start of a sentence, a comma, then a request or a question ("Vide, can I please speak
# to your boss?"): a vocative.
_VOCATIVE_AFTER = re.compile(
    r",[ \t]+(?:can|could|would|will|please|do|did|are|is|have|i|you|we|what|where|when|how|why|thanks|"
    r"thank|listen|look|come|tell|let|help|wait|stop)\b", re.IGNORECASE
)
_CAPITALISED = re.compile(r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zà-öø-ÿā-ž'’-]+")
_CONTRACTION = re.compile(r"(?i)['’](?:m|s|ll|re|ve|d|t)$")
_INTERJECTIONS = frozenset(
    """hello hi hey guys folks everyone everybody all there sir madam team bro dude mate friends
    ladies gentlemen world god lord jesus mom dad mum""".split()  # noqa: SIM905
)


class VocativeNameRecognizer(_StopWords, LocalRecognizer):
    """Names addressed directly: after a greeting or a role title ("Hi Siiri", "Officer Adomo"), and a
    sentence-opening name followed by a comma and a request ("Warrane, can I ..."). One or two capitalised
    words, neither an ordinary word, a stop word, nor a place or company word."""

    NAME = "VocativeNameRecognizer"

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language, name=self.NAME)

    def load(self) -> None:
        super().load()
        from app.pii.gazetteer import common_words, first_names

        self._not_name = self._not_name | common_words() | _INTERJECTIONS
        self._first = first_names()

    def analyze(self, text, entities, nlp_artifacts=None):
        if "PERSON" not in entities:
            return []
        out = []
        for m in _GREETING_NAME.finditer(text):
            span = self._name_at(text, m.end())
            if span:
                out.append(make_result("PERSON", *span, 0.6, self.name, self.id))
        for m in _VOCATIVE_AFTER.finditer(text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            lead = _LEAD.match(text, line_start).end()
            head = text[lead : m.start()]
            if not 1 <= len(head.split()) <= 2:
                continue
            span = self._name_at(text, lead)
            if span and span[1] == m.start():
                out.append(make_result("PERSON", *span, 0.6, self.name, self.id))
        return out

    def _name_at(self, text: str, pos: int) -> tuple[int, int] | None:
        words = []
        while len(words) < 2:
            w = _CAPITALISED.match(text, pos)
            if w is None or not self._name_word(w.group(), lower=False):
                break
            if w.group().endswith("ly") and w.group().casefold() not in self._first:
                break  # "Ideally, you would...": an adverb; "Emily" and "Kelly" are first names
            if _CONTRACTION.search(w.group()):
                break  # "Hi, I'm Ada", "Hello, We'll"
            words.append(w)
            nxt = re.match(r"[ \t]+", text[w.end() : w.end() + 3])
            if nxt is None:
                break
            pos = w.end() + nxt.end()
        if not words:
            return None
        return words[0].start(), words[-1].end()
