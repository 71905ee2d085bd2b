"""First-name gazetteer for the name recognizer: Jörg Michael's nam_dict.txt, as shipped by `gender-guesser`.

About 45,000 first names from 54 countries (Icelandic, Hungarian, Finnish, Slavic, Arabic, East Asian...),
compiled independently of Faker, which generated the evaluation corpus: Faker's own name lists would make
the evaluation circular. The file is GNU FDL 1.2; only the data file is read, gender-guesser's (GPLv3) code
is never imported. Everything is read from installed package data once per process: no network, no
per-task loading.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

_HEX = frozenset("0123456789ABCDEF")


def _nam_dict_lines() -> list[str]:
    # resources.files() imports only gender_guesser/__init__.py, which is empty.
    path = resources.files("gender_guesser") / "data" / "nam_dict.txt"
    return path.read_text(encoding="utf-8").splitlines()


@lru_cache(maxsize=1)
def first_names() -> dict[str, int]:
    """Every first name, case-folded, with its highest frequency in any country on nam_dict's scale (1 rare
    .. 13 extremely common; 0 where none is given). A '+' inside a name (Arabic, Chinese, Korean) stands for
    '-', ' ' or nothing; the spaced form is two tokens and never matched as one, so only the other two are
    kept."""
    out: dict[str, int] = {}
    for line in _nam_dict_lines():
        # "=" lines map short forms onto long ones; both already have their own entries.
        if not line or line[0] in "#=":
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        name = parts[1].casefold()
        # Columns 31 onwards hold one hexadecimal frequency digit per country, blank where not used there.
        frequency = max((int(c, 16) for c in line[30:] if c in _HEX), default=0)
        for variant in ({name.replace("+", ""), name.replace("+", "-")} if "+" in name else {name}):
            if len(variant) >= 2:
                out[variant] = max(out.get(variant, 0), frequency)
    return out


@lru_cache(maxsize=1)
def common_word_names() -> frozenset[str]:
    """First names that are also ordinary English words ("will", "may", "grace"): see
    scripts/build_name_stoplist.py for how the list was made."""
    text = resources.files("app.pii") / "data" / "name_common_words.txt"
    return frozenset(w.strip() for w in text.read_text(encoding="utf-8").splitlines()
                     if w.strip() and not w.startswith("#"))


@lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    """Ordinary English words, lower case (scripts/build_common_words.py): the vocative and greeting cues
    never take one of these for a name."""
    text = resources.files("app.pii") / "data" / "common_words.txt"
    return frozenset(w.strip() for w in text.read_text(encoding="utf-8").splitlines()
                     if w.strip() and not w.startswith("#"))


@lru_cache(maxsize=1)
def first_names_by_gender() -> dict[str, str]:
    """Case-folded first names nam_dict marks as male or female ("M"/"F", "1M"/"1F" as a first part,
    "?M"/"?F" mostly), for counting gendered names in a snapshot's bias report. Unisex names ("?") are
    left out, and so are names that are also ordinary English words ("will", "may", "grace"): in
    lower-cased text they are mostly the word."""
    skip = common_word_names() | common_words()
    out: dict[str, str] = {}
    for line in _nam_dict_lines():
        if not line or line[0] in "#=":
            continue
        code, parts = line[:2].strip(), line.split()
        gender = {"M": "male", "1M": "male", "?M": "male", "F": "female", "1F": "female", "?F": "female"}.get(code)
        if gender is None or len(parts) < 2 or "+" in parts[1]:
            continue
        name = parts[1].casefold()
        if len(name) < 2 or name in skip:
            continue
        # A name listed under both genders (different countries) is ambiguous: drop it.
        if out.get(name, gender) != gender:
            out[name] = ""
        else:
            out[name] = gender
    return {k: v for k, v in out.items() if v}
