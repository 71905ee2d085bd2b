"""The containment half of the evaluation-set guard: word n-grams, one text inside the other.

MinHash LSH finds near copies, and Jaccard is the wrong measure when a short text sits inside a long
one: an evaluation question and answer pasted into a longer training document have a Jaccard of
about |short| / |long|, far below any useful threshold. So evaluation examples also store fingerprints
of their word n-grams (8 words by default; an evaluation set is small), a training batch's
fingerprints are looked up there, and each candidate pair is verified exactly on the n-gram sets. A
pair is flagged when the overlap coefficient |A ∩ B| / min(|A|, |B|) reaches the evaluation set's
`eval_containment`, so a training example that is a passage of a long evaluation item counts too,
and only with at least MIN_NGRAMS n-grams (11 words) on the smaller side: a shared phrase is no
evidence.

Fingerprints are winnowed (Schleimer, Wilkerson and Aiken, SIGMOD 2003, the scheme behind MOSS): of
every WINDOW consecutive n-gram hashes the smallest is kept. Two texts that share a run of
WINDOW + n - 1 words share that run's windows, hence their minima: no contained item is missed, and
about 2 / (WINDOW + 1) of the hashes are stored and looked up.

Texts are normalised and split exactly as for MinHash (app/dedup/minhash.py); scripts written
without spaces are cut into character n-grams twice as long as the word n-grams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

from app.dedup.minhash import MinHashSpec, shingle_batch
from app.dedup.schemas import DedupPolicy

WINDOW = 4
# The winnowing guarantee needs a shared run of WINDOW n-grams; fewer is no evidence anyway.
MIN_NGRAMS = WINDOW
METHOD = "containment"


def ngram_spec(policy: DedupPolicy) -> MinHashSpec:
    return MinHashSpec(shingle_size=policy.eval_ngram, char_shingle_size=2 * policy.eval_ngram,
                       max_chars=policy.max_chars)


class Ngrams:
    """The n-grams of a batch of texts, in text order; their winnowed fingerprints (signed 64-bit, a
    BIGINT column) as two flat arrays, `fp` and the text each belongs to, `fp_doc` (sorted by text, one
    entry per distinct fingerprint of a text); and a text's n-gram set on demand. A text with fewer than
    MIN_NGRAMS distinct n-grams has neither (a text shorter than one n-gram is one "n-gram" of all its
    words, left to the Jaccard guard). Computed for the whole batch at once: per-text numpy calls were
    most of the cost."""

    def __init__(self, texts: Sequence[str], policy: DedupPolicy) -> None:
        flat, counts, _ = shingle_batch(texts, ngram_spec(policy))
        n = len(texts)
        h = np.fromiter((xxhash.xxh64_intdigest(g) for g in flat), dtype=np.uint64, count=len(flat)).view(np.int64)
        doc = np.repeat(np.arange(n), counts)
        ends = np.cumsum(counts)
        self._flat, self._bounds = flat, list(zip((ends - counts).tolist(), ends.tolist(), strict=True))
        # Distinct n-grams per text: sort by (text, hash), count the first of each run.
        order = np.lexsort((h, doc))
        hs, ds = h[order], doc[order]
        first = np.ones(len(hs), dtype=bool)
        first[1:] = (hs[1:] != hs[:-1]) | (ds[1:] != ds[:-1])
        self.enough = np.bincount(ds[first], minlength=n) >= MIN_NGRAMS
        if len(h) >= WINDOW:
            # The minimum of every window of WINDOW consecutive n-grams that lies within one text.
            mins = np.lib.stride_tricks.sliding_window_view(h, WINDOW).min(axis=1)
            inside = doc[: len(mins)] == doc[WINDOW - 1:]
            mins, mdoc = mins[inside], doc[: len(inside)][inside]
            keep = self.enough[mdoc]
            mins, mdoc = mins[keep], mdoc[keep]
            order = np.lexsort((mins, mdoc))
            mins, mdoc = mins[order], mdoc[order]
            first = np.ones(len(mins), dtype=bool)
            first[1:] = (mins[1:] != mins[:-1]) | (mdoc[1:] != mdoc[:-1])
            self.fp, self.fp_doc = mins[first], mdoc[first]
        else:
            self.fp, self.fp_doc = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    @property
    def fingerprints(self) -> list[np.ndarray]:
        """Per text, its fingerprints."""
        cuts = np.searchsorted(self.fp_doc, np.arange(1, len(self._bounds)))
        return np.split(self.fp, cuts)

    def set(self, i: int) -> set[bytes]:
        a, b = self._bounds[i]
        return set(self._flat[a:b]) if self.enough[i] else set()


def overlap(a: set[bytes], b: set[bytes]) -> float | None:
    """|a ∩ b| / min(|a|, |b|), or None when either side has too few n-grams to say anything."""
    if len(a) < MIN_NGRAMS or len(b) < MIN_NGRAMS:
        return None
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    return sum(1 for g in small if g in big) / len(small)
