"""Recognizers that close gaps in Presidio's stock set, measured in docs/pii.md (bench/pii_eval).

Each one is a Presidio recognizer, so the analyzer's context enhancement, thresholds and allow-lists apply to
it like to the stock ones. Scores are chosen so that a bare match of a loose shape stays below the default
policy threshold (0.4) and only a match with a context word ("call", "fax", "card") or a validated checksum
gets through.
"""

from __future__ import annotations

from presidio_analyzer import EntityRecognizer

from app.pii.recognizers.common import make_result
from app.pii.recognizers.cues import LowerCaseCueRecognizer, SubjectVerbNameRecognizer, VocativeNameRecognizer
from app.pii.recognizers.names import GazetteerNameRecognizer, PersonCueRecognizer, SpeakerLabelRecognizer
from app.pii.recognizers.passes import (
    coordinated_names,
    drop_ordinary_words,
    prefer_cued_names,
    propagate_mentions,
    retype_names,
    trim_unit_words,
)
from app.pii.recognizers.patterns import (
    CaseInsensitiveIbanRecognizer,
    LoosePhoneRecognizer,
    OfflineEmailRecognizer,
    PaymentCardRecognizer,
    PhoneAwareNhsRecognizer,
    RegionPhoneRecognizer,
    StreetAddressRecognizer,
    card_network_ok,
    luhn_ok,
    offline_tld_extractor,
)
from app.pii.recognizers.records import PersonRecordRecognizer

__all__ = [
    "CaseInsensitiveIbanRecognizer",
    "GazetteerNameRecognizer",
    "LoosePhoneRecognizer",
    "LowerCaseCueRecognizer",
    "OfflineEmailRecognizer",
    "PaymentCardRecognizer",
    "PersonCueRecognizer",
    "PersonRecordRecognizer",
    "PhoneAwareNhsRecognizer",
    "RegionPhoneRecognizer",
    "SpeakerLabelRecognizer",
    "StreetAddressRecognizer",
    "SubjectVerbNameRecognizer",
    "VocativeNameRecognizer",
    "card_network_ok",
    "coordinated_names",
    "custom_recognizers",
    "drop_ordinary_words",
    "luhn_ok",
    "make_result",
    "offline_tld_extractor",
    "prefer_cued_names",
    "propagate_mentions",
    "retype_names",
    "trim_unit_words",
]


def custom_recognizers(language: str = "en", gazetteer: bool = True) -> list[EntityRecognizer]:
    recognizers: list[EntityRecognizer] = [
        PaymentCardRecognizer(language),
        LoosePhoneRecognizer(language),
        StreetAddressRecognizer(language),
        PersonCueRecognizer(language),
        SpeakerLabelRecognizer(language),
        SubjectVerbNameRecognizer(language),
        CaseInsensitiveIbanRecognizer(language),
    ]
    if gazetteer:
        recognizers.append(GazetteerNameRecognizer(language))
        recognizers.append(LowerCaseCueRecognizer(language))
        recognizers.append(VocativeNameRecognizer(language))
        recognizers.append(PersonRecordRecognizer(language))
    return recognizers
