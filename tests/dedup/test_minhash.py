from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from app.dedup.minhash import (
    FLAG_CHAR_SHINGLES,
    FLAG_EMPTY,
    FLAG_SHORT,
    FLAG_TRUNCATED,
    HASH_SHA1_32,
    HASH_XXH32,
    SCHEME_AFFINE32,
    SCHEME_LEGACY,
    IncompatibleSignatures,
    MinHasher,
    MinHashSpec,
    estimate_jaccard,
    exact_jaccard,
    from_bytes,
    hash_function,
    normalize,
    shingles,
    to_bytes,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up.",
    "",
    "   \n\t  ",
    "Hi there",
    "東京は日本の首都であり、世界最大の都市圏の一つです。人口は約1400万人です。",
    "สวัสดีครับ ยินดีต้อนรับสู่ประเทศไทย",
    "नमस्ते दुनिया, यह एक परीक्षण वाक्य है जो देवनागरी लिपि में लिखा गया है",
    "Straße — ÉCOLE! ＦＵＬＬ-width ｔｅｘｔ and emoji 🎉🎉 inside a sentence of some length",
    "word " * 300,
]


@pytest.mark.parametrize("scheme", [SCHEME_AFFINE32, SCHEME_LEGACY])
@pytest.mark.parametrize("family", [HASH_XXH32, HASH_SHA1_32])
@pytest.mark.parametrize("num_perm,seed", [(128, 1), (64, 42)])
def test_signatures_equal_datasketch_bit_for_bit(scheme, family, num_perm, seed):
    spec = MinHashSpec(num_perm=num_perm, seed=seed, scheme=scheme, hash_family=family)
    sigs = MinHasher(spec).signatures(TEXTS)
    for text, values in zip(TEXTS, sigs.values, strict=True):
        sh, _ = shingles(text, spec)
        m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme, hashfunc=hash_function(family))
        m.update_batch(sh)
        assert m.hashvalues.dtype == values.dtype
        assert np.array_equal(m.hashvalues, values), text


def test_bit_equality_needs_datasketch_given_our_hash_function():
    # What the README's "bit-equal to datasketch" rests on: the default spec hashes shingles with xxh32,
    # so datasketch agrees only when handed xxhash.xxh32_intdigest, not with its default (sha1).
    import xxhash

    spec = MinHashSpec()
    assert spec.hash_family == HASH_XXH32 and hash_function(HASH_XXH32) is xxhash.xxh32_intdigest
    [ours] = MinHasher(spec).signatures(TEXTS[:1]).values
    sh, _ = shingles(TEXTS[0], spec)
    given, default = MinHash(num_perm=spec.num_perm, seed=spec.seed, hashfunc=xxhash.xxh32_intdigest), \
        MinHash(num_perm=spec.num_perm, seed=spec.seed)
    given.update_batch(sh)
    default.update_batch(sh)
    assert np.array_equal(given.hashvalues, ours)
    assert not np.array_equal(default.hashvalues, ours)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "bit-equal to datasketch when it is given our hash: `MinHash(hashfunc=xxhash.xxh32_intdigest)`" in readme


def test_batch_larger_than_one_chunk_matches_one_by_one():
    mh = MinHasher()
    texts = [f"document number {i} " + "filler words go here " * (i % 50) for i in range(600)]
    texts.append("a single gigantic document " * 5000)  # more shingles than one permutation chunk
    batch = mh.signatures(texts).values
    single = np.vstack([mh.signatures([t]).values for t in texts])
    assert np.array_equal(batch, single)


def test_normalize_folds_case_punctuation_and_whitespace():
    assert normalize("Hello,   WORLD!!\n\tfoo_bar-baz") == "hello world foo bar baz"
    assert normalize("Straße") == "strasse"
    assert normalize("ＦＵＬＬ") == "full"  # NFKC folds full-width forms
    assert normalize("soft\u00adhyphen zero\u200bwidth") == "softhyphen zerowidth"
    # combining marks are part of a word, not separators
    assert normalize("देवनागरी लिपि") == "देवनागरी लिपि"
    assert normalize("emoji🎉here") == "emoji here"
    assert normalize("  \n ") == ""


def test_shingle_edge_cases():
    spec = MinHashSpec()
    assert shingles("", spec) == ([], FLAG_EMPTY)
    assert shingles(" ... !!! ", spec) == ([], FLAG_EMPTY)
    assert shingles("Hi there", spec) == ([b"hi there"], FLAG_SHORT)
    sh, flags = shingles("one two three four five six", spec)
    assert sh == [b"one two three four five", b"two three four five six"] and flags == 0
    sh, flags = shingles("东京是日本的首都", spec)
    assert flags & FLAG_CHAR_SHINGLES and sh[0].decode() == "东京是日本"
    sh, flags = shingles("x" * 10 + " y" * 300_000, spec)
    assert flags & FLAG_TRUNCATED


def test_empty_text_signature_never_matches_anything():
    mh = MinHasher()
    sigs = mh.signatures(["", "a real sentence with quite a few words in it"])
    assert sigs.empty.tolist() == [True, False]
    assert sigs.flags[0] & FLAG_EMPTY


def test_cjk_near_duplicates_are_similar_and_unrelated_are_not():
    mh = MinHasher()
    a = "東京は日本の首都であり、世界最大の都市圏の一つです。人口は約1400万人で、多くの企業の本社があります。"
    b = "東京は日本の首都であり、世界最大の都市圏の一つです。人口は約1400万人で、多くの会社の本社があります。"
    c = "京都は古い寺院と庭園で知られ、毎年多くの観光客が訪れる歴史的な都市です。"
    v = mh.signatures([a, b, c]).values
    assert estimate_jaccard(v[0], v[1]) > 0.6
    assert estimate_jaccard(v[0], v[2]) < 0.1


def test_estimate_tracks_exact_jaccard():
    spec = MinHashSpec(num_perm=256)
    mh = MinHasher(spec)
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(5000)]
    base = list(rng.choice(vocab, 400))
    errs = []
    for keep in (0.95, 0.8, 0.6, 0.4):
        other = [w if rng.random() < keep else str(rng.choice(vocab)) for w in base]
        ta, tb = " ".join(base), " ".join(other)
        exact = exact_jaccard(shingles(ta, spec)[0], shingles(tb, spec)[0])
        v = mh.signatures([ta, tb]).values
        errs.append(abs(estimate_jaccard(v[0], v[1]) - exact))
    # standard error of the estimator is sqrt(J(1-J)/k) <= 0.031 at k=256; allow 3 sigma
    assert max(errs) < 0.1


def test_spec_tag_and_refusal_to_mix():
    a = MinHashSpec()
    assert a.tag == "mh:xxh32:affine32:p128:s1:w5:c5:n1"
    a.check_compatible(MinHashSpec(max_chars=10))  # the cap is not part of comparability
    for other in (
        MinHashSpec(scheme=SCHEME_LEGACY),
        MinHashSpec(hash_family=HASH_SHA1_32),
        MinHashSpec(num_perm=64),
        MinHashSpec(seed=2),
        MinHashSpec(shingle_size=3),
    ):
        with pytest.raises(IncompatibleSignatures):
            a.check_compatible(other)
    assert MinHashSpec.from_dict(a.to_dict()) == a


def test_storage_round_trip_both_schemes():
    for scheme in (SCHEME_AFFINE32, SCHEME_LEGACY):
        spec = MinHashSpec(scheme=scheme)
        v = MinHasher(spec).signatures(["some text that is long enough to shingle"]).values[0]
        data = to_bytes(v, spec)
        assert len(data) == 4 * spec.num_perm
        assert np.array_equal(from_bytes(data, spec), v)
    with pytest.raises(IncompatibleSignatures):
        from_bytes(b"\0" * 16, MinHashSpec())


def test_batch_shingling_equals_one_text_at_a_time():
    from app.dedup.minhash import shingle_batch, shingle_sets

    spec = MinHashSpec()
    texts = TEXTS + ["one", "one two three four five", "x " * 7, "日本語のテキストとEnglish words mixed together here"]
    flat, counts, flags = shingle_batch(texts, spec)
    pos = 0
    for text, c, f in zip(texts, counts, flags, strict=True):
        sh, fl = shingles(text, spec)
        assert flat[pos : pos + c] == sh and f == fl, text
        pos += c
    assert shingle_sets(texts, spec) == [set(shingles(t, spec)[0]) for t in texts]
