"""The lexicons of the snapshot bias report (docs/bias.md, "Lexicons"), loaded once per process.

Demographic descriptors and occupations are this package's `lexicons/*.tsv` (each file's header names its
source and license); first names and their gender are nam_dict's, through app.pii.gazetteer; sentiment is
VADER's lexicon (vaderSentiment's `vader_lexicon.txt`, MIT; only the data file is read). A missing or
malformed file stops the API at start-up with a message naming it (`check()`, called by create_app):
a bias report that silently lost a dimension would under-report exactly what it exists to show.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

# Report order; each file's groups are its second column.
DIMENSIONS = ("gender", "age", "nationality_ethnicity", "religion", "disability", "sexual_orientation")
# Files with a third column (the kind of evidence: a pronoun or a term; a nationality or an ethnicity).
KINDS = {"gender": ("pronoun", "term"), "nationality_ethnicity": ("nationality", "ethnicity")}
# VADER valences run from -4 to +4; words within ±1 of neutral are mostly mild and context-dependent.
SENTIMENT_MIN_ABS = 1.0


class LexiconError(RuntimeError):
    """A lexicon file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Lexicons:
    # Every lower-case term (one word, or two joined by a space), with for each term index: its
    # descriptor group (index into `groups`, -1 if none), evidence kind (index into `kinds`), occupation
    # (index into `occupations`, -1 if none) and VADER valence (0 if not a sentiment word).
    terms: list[str]
    term_group: np.ndarray
    term_kind: np.ndarray
    term_occupation: np.ndarray
    term_valence: np.ndarray
    groups: list[tuple[str, str]]  # (dimension, group)
    kinds: list[str]
    occupations: list[str]
    # First names (lower case) and the gender group index each counts for.
    names: list[str]
    name_group: np.ndarray
    # First words of the two-word terms: only positions starting with one of these build a bigram.
    bigram_firsts: list[str]
    version: str  # sha256 over every file read, so a report names exactly which lexicons made it
    sources: dict[str, str]  # file -> its header's Source/License lines

    def term_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.terms)}


def _read(name: str) -> tuple[str, list[list[str]], str]:
    path = resources.files("app.snapshots") / "lexicons" / name
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError, UnicodeDecodeError) as exc:
        raise LexiconError(f"bias lexicon app/snapshots/lexicons/{name} cannot be read: {exc}") from None
    header, rows = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            header.append(line[1:].strip())
            continue
        cols = line.split("\t")
        if len(cols) not in (2, 3) or not all(c.strip() for c in cols) or cols[0] != cols[0].lower() \
                or cols[0].count(" ") > 1:
            raise LexiconError(f"bias lexicon app/snapshots/lexicons/{name} line {number} is malformed: {line!r} "
                               "(want: lower-case term of one or two words, TAB, group[, TAB, kind])")
        rows.append([c.strip() for c in cols])
    if not rows:
        raise LexiconError(f"bias lexicon app/snapshots/lexicons/{name} holds no terms")
    if not any(h.lower().startswith(("source", "license")) or "License:" in h for h in header):
        raise LexiconError(f"bias lexicon app/snapshots/lexicons/{name} names no source or license in its header")
    return text, rows, " ".join(h for h in header if "Source" in h or "License" in h)


def _vader() -> tuple[str, dict[str, float]]:
    try:
        path = resources.files("vaderSentiment") / "vader_lexicon.txt"
        text = path.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise LexiconError(f"sentiment lexicon vaderSentiment/vader_lexicon.txt cannot be read: {exc}") from None
    out: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        try:
            v = float(cols[1])
        except ValueError:
            raise LexiconError(f"sentiment lexicon vader_lexicon.txt line {number} is malformed") from None
        word = cols[0].strip()
        # Words only: the emoticons (":-)") never survive the report's tokenizer.
        if word.isalpha() and abs(v) >= SENTIMENT_MIN_ABS:
            out[word] = v
    if len(out) < 1000:
        raise LexiconError("sentiment lexicon vader_lexicon.txt: too few entries, the file looks truncated")
    return text, out


@lru_cache(maxsize=1)
def load() -> Lexicons:
    from app.pii.gazetteer import first_names_by_gender

    digest = hashlib.sha256()
    groups: list[tuple[str, str]] = []
    group_ix: dict[tuple[str, str], int] = {}
    kinds: list[str] = ["term"]
    term_info: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for dim in DIMENSIONS:
        text, rows, src = _read(f"{dim}.tsv")
        digest.update(text.encode())
        sources[f"{dim}.tsv"] = src
        for row in rows:
            term, group = row[0], row[1]
            kind = row[2] if len(row) == 3 else "term"
            if dim in KINDS and kind not in KINDS[dim]:
                raise LexiconError(f"bias lexicon app/snapshots/lexicons/{dim}.tsv: kind {kind!r} of {term!r} is "
                                   f"not one of {', '.join(KINDS[dim])}")
            g = group_ix.setdefault((dim, group), len(groups))
            if g == len(groups):
                groups.append((dim, group))
            if kind not in kinds:
                kinds.append(kind)
            info = term_info.setdefault(term, {})
            if "group" in info and info["group"] != g:
                raise LexiconError(f"bias lexicon: term {term!r} is listed for two groups "
                                   f"({groups[info['group']]} and {(dim, group)})")
            info.update(group=g, kind=kinds.index(kind))
    text, rows, src = _read("occupations.tsv")
    digest.update(text.encode())
    sources["occupations.tsv"] = src
    occupations: list[str] = []
    for term, occ, *_ in rows:
        if occ not in occupations:
            occupations.append(occ)
        info = term_info.setdefault(term, {})
        if "group" in info:
            raise LexiconError(f"bias lexicon: {term!r} is both a demographic term and an occupation")
        info["occupation"] = occupations.index(occ)
    vtext, valence = _vader()
    digest.update(vtext.encode())
    sources["vader_lexicon.txt"] = ("VADER (Hutto & Gilbert, 2014), vaderSentiment 3.3.2, MIT License; words with "
                                    f"|valence| >= {SENTIMENT_MIN_ABS}")
    for word, v in valence.items():
        # A descriptor or occupation is never also counted as sentiment ("disabled" is in VADER): its
        # co-occurrence with its own group would be the lexicon talking, not the data.
        if word not in term_info:
            term_info[word] = {"valence": v}
    terms = sorted(term_info)
    n = len(terms)
    term_group = np.full(n, -1, dtype=np.int32)
    term_kind = np.zeros(n, dtype=np.int32)
    term_occ = np.full(n, -1, dtype=np.int32)
    term_val = np.zeros(n, dtype=np.float64)
    for i, t in enumerate(terms):
        info = term_info[t]
        term_group[i] = info.get("group", -1)
        term_kind[i] = info.get("kind", 0)
        term_occ[i] = info.get("occupation", -1)
        term_val[i] = info.get("valence", 0.0)
    names_by_gender = first_names_by_gender()
    digest.update(str(len(names_by_gender)).encode())
    if "name" not in kinds:
        kinds.append("name")
    name_list = sorted(k for k in names_by_gender if k not in term_info)
    name_group = np.array([group_ix[("gender", names_by_gender[k])] for k in name_list], dtype=np.int32)
    sources["first names"] = ("nam_dict.txt (Joerg Michael), shipped by gender-guesser 0.4.0, GNU FDL 1.2; names "
                              "marked male or female only, ordinary English words left out")
    firsts = sorted({t.split(" ")[0] for t in terms if " " in t})
    return Lexicons(terms=terms, term_group=term_group, term_kind=term_kind, term_occupation=term_occ,
                    term_valence=term_val, groups=groups, kinds=kinds, occupations=occupations, names=name_list,
                    name_group=name_group, bigram_firsts=firsts, version=digest.hexdigest()[:16], sources=sources)


def check() -> None:
    """Load every lexicon now (start-up), so a broken file stops the process instead of a report."""
    load()
