"""The containment half of the evaluation-set guard: word n-grams, one text inside the other.

MinHash LSH finds near copies, and Jaccard is the wrong measure when a short text sits inside a long
one: an evaluation question and answer pasted into a longer training document have a Jaccard of
about |short| / |long|, far below any useful threshold. So evaluation examples also store the 64-bit
hashes of their word n-grams (8 words by default; an evaluation set is small), a training batch's
n-grams are looked up there, and each candidate pair is verified exactly on the n-gram sets. A pair
is flagged when the overlap coefficient |A ∩ B| / min(|A|, |B|) reaches the evaluation set's
`eval_containment`, so a training example that is a passage of a long evaluation item counts too,
and only with at least MIN_NGRAMS n-grams on the smaller side: a shared phrase is no evidence.

Texts are normalised and split exactly as for MinHash (app/dedup/minhash.py); scripts written
without spaces are cut into character n-grams twice as long as the word n-grams.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from app.dedup.minhash import MinHashSpec, shingle_sets
from app.dedup.schemas import DedupPolicy

MIN_NGRAMS = 3
METHOD = "containment"


def ngram_spec(policy: DedupPolicy) -> MinHashSpec:
    return MinHashSpec(shingle_size=policy.eval_ngram, char_shingle_size=2 * policy.eval_ngram,
                       max_chars=policy.max_chars)


def ngram_sets(texts: Sequence[str], policy: DedupPolicy) -> list[set[bytes]]:
    """Each text's n-gram set; empty for a text with fewer than MIN_NGRAMS of them (a text shorter
    than one n-gram is one "n-gram" of all its words, and is left to the Jaccard guard)."""
    return [s if len(s) >= MIN_NGRAMS else set() for s in shingle_sets(texts, ngram_spec(policy))]


def fingerprint(ngrams: set[bytes]) -> list[int]:
    """64-bit hashes as signed integers (a BIGINT column). A collision only adds a candidate: every
    candidate is verified on the n-grams themselves."""
    out = []
    for g in ngrams:
        h = xxhash.xxh64_intdigest(g)
        out.append(h - (1 << 64) if h >= 1 << 63 else h)
    return out


def overlap(a: set[bytes], b: set[bytes]) -> float | None:
    """|a ∩ b| / min(|a|, |b|), or None when either side has too few n-grams to say anything."""
    if len(a) < MIN_NGRAMS or len(b) < MIN_NGRAMS:
        return None
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    return sum(1 for g in small if g in big) / len(small)
