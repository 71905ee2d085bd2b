"""Person records: lines of delimited fields about one person ("john smith, 12 oak st, 1984-03-02"), as in
CRM exports, record-linkage sets and CSV dumps pasted into prompts.

Neither the model nor the cue recognizers see these: no sentence, no cue word, often no capitals. The
record's shape is the evidence instead: a field of two or three name words (the first a known first name)
next to fields that are dates, street addresses, phone numbers or emails; those fields are typed too. A header row ("name,address,dob") names its columns
outright, and every row under it is typed by them. Birth dates are DATE_OF_BIRTH: a date in a person's
record (or after "born", "DOB") identifies them together with a name or a postcode, where "in 1990"
does not; DATE_TIME stays out of the default policy.
"""

from __future__ import annotations

import re

from presidio_analyzer import LocalRecognizer

from app.pii.recognizers.common import _ORG_WORDS, _PLACE_WORDS, make_result
from app.pii.recognizers.patterns import _CAP, _STREET_PREFIXES, _STREET_SUFFIXES, _STREET_WORDS

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
          r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DATE = re.compile(
    rf"(?i)(?<![\w/.-])(?:\d{{4}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})"
    rf"(?![\w/-]|\.\d)"
)
_BIRTH_CUE = re.compile(
    r"(?i)\b(?:born(?:\s+on)?|b\.|dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthday(?:\s+is)?|"
    r"birth(?:ed)?)\s*[:=-]?\s*(?:is\s+|was\s+|on\s+)?$"
)
_FIELD_SPLIT = re.compile(r"\s*(?:\t|;|\||,(?!\d{3}\b))\s*")
_STREET = re.compile(
    r"(?i)^\d{1,6}[a-z]?\s+(?:[\w'’.-]+\s+){0,4}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|"
    r"court|ct|place|pl|way|terrace|parkway|pkwy|highway|hwy|circle|cir|square|sq)\.?(?:\s+(?:apt|unit|suite|#)"
    r"\.?\s*\w+)?$"
)
_PHONE = re.compile(r"^\+?[\d().\s-]{7,20}$")
_LABEL_LEAD = re.compile(r"[ \t>*-]*")
# A street line: a house number before or after a word, or a unit/PO box.
_ADDRESS_LINE = re.compile(
    r"(?i)^[ \t>*-]*(?:\d{1,6}[a-z]?\s+[^\W\d_]|[^\W\d_][\w'’.-]*(?:[ \t]+[\w'’.-]+){0,3}[ \t]+\d{1,5}[a-z]?\b"
    r"|(?:apt|suite|unit|p\.?\s?o\.?\s?box)\b)"
)
# A street line in full: house number and street word, street suffix and number, a unit or a PO box (the
# address recognizer's shapes), on a line of its own.
_STREET_LINE = re.compile(
    rf"^[ \t>*-]*(?:\d{{1,6}}[A-Za-z]?,?[ \t]+(?:\d{{1,5}}[ \t]+)?(?:{_CAP}[ \t]+){{0,4}}(?:{_STREET_WORDS})\b"
    rf"|(?:\d{{1,6}}[ \t]+)?(?:{_CAP}[ \t]+){{0,2}}[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]*(?:{_STREET_SUFFIXES})[ \t]+\d{{1,5}}[a-zA-Z]?\b"
    rf"|(?:{_STREET_PREFIXES})[ \t]+(?:[\w'’.-]+[ \t]+){{0,4}}?\d{{1,5}}[a-zA-Z]?\b"
    r"|(?:Apt\.?|Apartment|Suite|Unit|Flat|P\.?[ \t]?O\.?[ \t]?Box)[ \t]*#?[ \t]*\d)"
)
_YEARS = re.compile(r"^(?:1[5-9]|20)\d\d\s?[-–/]\s?(?:1[5-9]|20)\d\d$")  # "2022-2021": a season
_EMAIL = re.compile(r"^[\w.+-]+@[\w-]+(?:\.[\w-]+)+$")
_NAME_COLUMNS = frozenset(
    """name full_name fullname first_name firstname given_name givenname forename last_name lastname
    surname family_name familyname middle_name patient patient_name customer customer_name client
    client_name employee employee_name contact contact_name person person_name""".split()  # noqa: SIM905
)
_DOB_COLUMNS = frozenset("dob birth_date birthdate date_of_birth birthday born d_o_b".split())  # noqa: SIM905
_ADDRESS_COLUMNS = frozenset("address street street_address address1 address_1 addr home_address".split())  # noqa: SIM905


def _column(header: str) -> str:
    return re.sub(r"[\s.-]+", "_", header.strip().strip("\"'").casefold())


class PersonRecordRecognizer(LocalRecognizer):
    """Names, street addresses and birth dates in delimited person records (module docstring)."""

    NAME = "PersonRecordRecognizer"

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["PERSON", "STREET_ADDRESS", "DATE_OF_BIRTH", "PHONE_NUMBER"],
                         supported_language=supported_language, name=self.NAME)

    def load(self) -> None:
        from spacy.lang.en.stop_words import STOP_WORDS

        from app.pii.gazetteer import common_word_names, first_names

        self._first = first_names()
        self._not_name = frozenset(STOP_WORDS) | common_word_names() | _ORG_WORDS | _PLACE_WORDS

    def analyze(self, text, entities, nlp_artifacts=None):
        out = []
        if "DATE_OF_BIRTH" in entities:
            for m in _DATE.finditer(text):
                if _BIRTH_CUE.search(text, max(0, m.start() - 25), m.start()):
                    out.append(make_result("DATE_OF_BIRTH", m.start(), m.end(), 0.85, self.name, self.id))
        if "\n" not in text and not _FIELD_SPLIT.search(text):
            return out  # one line, no fields: nothing shaped like a record
        columns: list[str] | None = None
        pos = 0
        lines = text.splitlines(keepends=True)
        for n, line in enumerate(lines):
            if "PERSON" in entities:
                out.extend(self._address_label(line, pos, lines[n + 1 : n + 3]))
            fields = self._fields(line, pos)
            pos += len(line)
            if len(fields) < 2:
                columns = None
                continue
            names = [_column(v) for _, _, v in fields]
            if columns is None and set(names) & (_NAME_COLUMNS | _DOB_COLUMNS):
                columns = names
                continue
            if columns is not None and len(columns) == len(fields):
                out.extend(self._by_header(columns, fields, entities))
            else:
                out.extend(self._by_shape(fields, entities))
        return out

    def _address_label(self, line: str, offset: int, following: list[str]) -> list:
        """A line that is only a name, over a line with a house number or a street, or over a company line
        and then that ("Maria Pesonen\nSaanatunturintie 6"): an envelope, a signature, a shipping label."""
        if not 1 <= line.count(" ") <= 4 or len(line) > 80:
            return []  # a name line is two to four words
        lead = _LABEL_LEAD.match(line).end()
        value = line[lead:].rstrip()
        if not value or not any(_ADDRESS_LINE.search(f) for f in following):
            return []
        # A first name the gazetteer does not know ("Duqyaha Karataev", "Mijail C Adomo") still heads a
        # label when the line under it (a blank line or a company line between allowed) is a street or a
        # unit in full, the shape the address recognizer needs, and the name line has no ordinary word.
        if not self._is_name(value) and not (self._is_name(value, known_first=False)
                                              and any(_STREET_LINE.search(f) for f in following)):
            return []
        return [make_result("PERSON", offset + lead, offset + lead + len(value), 0.6, self.name, self.id)]

    @staticmethod
    def _fields(line: str, offset: int) -> list[tuple[int, int, str]]:
        body = line.rstrip("\r\n")
        if not _FIELD_SPLIT.search(body):
            return []
        fields = []
        start = 0
        for sep in [*_FIELD_SPLIT.finditer(body), None]:
            end = sep.start() if sep else len(body)
            raw = body[start:end]
            stripped = raw.strip().strip("\"'")
            if stripped:
                lead = raw.find(stripped)
                fields.append((offset + start + lead, offset + start + lead + len(stripped), stripped))
            start = sep.end() if sep else len(body)
        return fields

    def _by_header(self, columns, fields, entities) -> list:
        out = []
        for column, (s, e, value) in zip(columns, fields):
            if column in _NAME_COLUMNS and "PERSON" in entities and any(c.isalpha() for c in value):
                out.append(make_result("PERSON", s, e, 0.8, self.name, self.id))
            elif column in _DOB_COLUMNS and "DATE_OF_BIRTH" in entities and _DATE.fullmatch(value):
                out.append(make_result("DATE_OF_BIRTH", s, e, 0.85, self.name, self.id))
            elif column in _ADDRESS_COLUMNS and "STREET_ADDRESS" in entities and re.search(r"\d", value):
                out.append(make_result("STREET_ADDRESS", s, e, 0.8, self.name, self.id))
        return out

    def _by_shape(self, fields, entities) -> list:
        kinds = [self._kind(value) for _, _, value in fields]
        if "name" not in kinds or sum(k in ("date", "street", "phone", "email") for k in kinds) < 1:
            return []
        # One name next to one other field is a pair ("Smith, John" or "Paris, 1900"); a record has at
        # least three fields or a street address beside the name.
        if len(fields) < 3 and "street" not in kinds:
            return []
        out = []
        for kind, (s, e, _) in zip(kinds, fields):
            if kind == "name" and "PERSON" in entities:
                out.append(make_result("PERSON", s, e, 0.7, self.name, self.id))
            elif kind == "street" and "STREET_ADDRESS" in entities:
                out.append(make_result("STREET_ADDRESS", s, e, 0.7, self.name, self.id))
            elif kind == "date" and "DATE_OF_BIRTH" in entities:
                out.append(make_result("DATE_OF_BIRTH", s, e, 0.7, self.name, self.id))
            elif kind == "phone" and "PHONE_NUMBER" in entities:
                out.append(make_result("PHONE_NUMBER", s, e, 0.6, self.name, self.id))
        return out

    def _kind(self, value: str) -> str | None:
        if _DATE.fullmatch(value):
            return "date"
        if _STREET.match(value):
            return "street"
        if _EMAIL.match(value):
            return "email"
        # Grouped, or long enough to be a full number: an unbroken 7-digit field is as often an ID.
        digits = sum(c.isdigit() for c in value)
        if (_PHONE.match(value) and (digits >= 10 or digits >= 7 and not value.isdigit())
                and not _YEARS.match(value)):
            return "phone"
        if self._is_name(value):
            return "name"
        return None

    def _is_name(self, value: str, known_first: bool = True) -> bool:
        """Two or three name words (a middle initial allowed), the first a known first name, all in one
        case: "john smith", "John A. Smith", "JOHN SMITH"."""
        tokens = value.split()
        if not 2 <= len(tokens) <= 4:
            return False
        words = [t for t in tokens if len(t.rstrip(".")) > 1]
        if not 2 <= len(words) <= 3 or len(tokens) - len(words) > 1 or len(tokens[0].rstrip(".")) == 1:
            return False
        if not all(re.fullmatch(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*", w) for w in words):
            return False
        shapes = {"lower" if w.islower() else "upper" if w.isupper() else "title" if w[0].isupper() else "?"
                  for w in words}
        if len(shapes) != 1 or "?" in shapes:
            return False
        if any(w.casefold() in self._not_name for w in words):
            return False
        if not known_first:
            from app.pii.gazetteer import common_words

            return shapes == {"title"} and not any(w.casefold() in common_words() for w in words)
        return words[0].casefold() in self._first
