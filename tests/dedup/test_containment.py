"""The containment fingerprints on their own: winnowing never misses a contained text, short texts
have no fingerprints, and the overlap coefficient counts from the smaller side."""

import random

import numpy as np

from app.dedup import containment
from app.dedup.schemas import DedupPolicy

POLICY = DedupPolicy()
WORDS = [f"w{i}" for i in range(400)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_a_contained_text_always_shares_a_fingerprint_and_verifies():
    rng = random.Random(5)
    for _ in range(300):
        inner = _text(rng, rng.randrange(11, 60))  # 11 words = 4 n-grams, the smallest that counts
        outer = f"{_text(rng, rng.randrange(0, 200))} {inner} {_text(rng, rng.randrange(0, 200))}"
        g = containment.Ngrams([inner, outer], POLICY)
        assert np.intersect1d(g.fingerprints[0], g.fingerprints[1]).size >= 1
        assert containment.overlap(g.set(0), g.set(1)) == 1.0


def test_winnowing_keeps_a_fraction_of_the_hashes():
    rng = random.Random(6)
    g = containment.Ngrams([_text(rng, 2000)], POLICY)
    n_grams = len(g.set(0))
    assert 0.3 * n_grams < len(g.fingerprints[0]) < 0.5 * n_grams  # about 2 / (WINDOW + 1)


def test_short_texts_and_shared_phrases():
    g = containment.Ngrams(["one two three four five six seven eight nine ten",  # 3 n-grams: too few
                            "a b c d e", ""], POLICY)
    assert [len(f) for f in g.fingerprints] == [0, 0, 0] and g.set(0) == set()
    rng = random.Random(7)
    a, b = _text(rng, 80), _text(rng, 80)
    quote = " ".join(a.split()[20:30])  # ten words of a inside b: 3 shared n-grams out of 73
    g = containment.Ngrams([a, f"{b} {quote} {b}"], POLICY)
    c = containment.overlap(g.set(0), g.set(1))
    assert c is not None and c < 0.1
    assert containment.overlap({b"x", b"y", b"z"}, {b"x", b"y", b"z", b"w"}) is None
