"""What the recognizer modules share: the result constructor and the word lists that both the name
recognizers (names.py) and the post-processing passes (passes.py) consult."""

from __future__ import annotations

import regex
from presidio_analyzer import AnalysisExplanation, RecognizerResult

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



_ORG_WORDS = frozenset(
    ["inc", "ltd", "llc", "llp", "plc", "corp", "co", "company", "group", "bank", "university", "college", "school", "institute", "technologies", "technology", "tech", "solutions", "partners", "consulting", "systems", "services", "labs", "lab", "media", "network", "networks", "capital", "holdings", "international", "foundation", "association", "agency", "department", "ministry", "council", "club", "team", "records", "studios", "studio", "press", "news", "times", "airlines", "airways", "motors", "energy", "health", "healthcare", "pharma", "software", "data", "cloud", "analytics", "traffic", "reports", "weekly", "public", "explorer", "global", "industries", "enterprises", "ventures", "trust", "fund", "society", "church", "hospital", "clinic", "center", "centre", "museum", "library", "restaurant", "hotel", "cafe", "bar", "store", "shop", "market", "insurance", "financial", "finance", "securities", "investments", "realty", "properties", "logistics", "express", "communications", "digital", "labs", "games", "entertainment", "productions", "pictures", "films", "music", "band", "orchestra"]
)
_PLACE_WORDS = frozenset(
    ["city", "county", "state", "states", "republic", "kingdom", "island", "islands", "mountain", "mountains", "river", "lake", "street", "road", "avenue", "north", "south", "east", "west", "new", "san", "santa", "saint", "st", "fort", "port", "park", "bay", "beach", "valley", "heights", "springs", "falls", "united", "africa", "america", "asia", "europe", "mount", "mt", "boulevard", "blvd", "raceway", "speedway", "world"]
)
# Address labels put the unit right after the name ("Mrs. Barbara Yudina Apt. 675"): it is not a surname.
_UNIT = r"(?:Apt|Apartment|Suite|Unit|Flat)\b"
