"""Text normalisation, shingling and MinHash signatures computed a batch at a time with numpy.

Signatures agree bit for bit with ``datasketch.MinHash`` given the same hash family, scheme, num_perm and
seed (tests/dedup/test_minhash.py checks both schemes). The speed comes from hashing each shingle once in
C (xxh32) and applying all permutations to a whole batch of shingles as one uint32 matrix operation, where
datasketch applies them per shingle (``update``) or per document (``bulk``).

Why ``affine32`` by default: it is datasketch 2.x's default, it is a bijection (the 61-bit Mersenne fold of
``legacy`` behaves like a random function and inflates estimates on large sets, datasketch issue #212), it
is twice as compact and about twice as fast. ``legacy`` stays available for signatures made by datasketch
before 2.0; the spec stored with every signature keeps the two from ever being compared.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import xxhash

# Bump when normalize() changes output for any input: signatures made before are then incomparable.
NORMALIZATION_VERSION = 1

SCHEME_AFFINE32 = "affine32"
SCHEME_LEGACY = "legacy"
HASH_XXH32 = "xxh32"
HASH_SHA1_32 = "sha1_32"

_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH32 = np.uint64((1 << 32) - 1)

# Signature flags (bit set), stored with the signature so a reviewer can see why a text was (not) compared.
FLAG_EMPTY = 1  # nothing left after normalisation: never linked by MinHash (exact hash still applies)
FLAG_SHORT = 2  # fewer tokens than one shingle: the whole text is one shingle
FLAG_CHAR_SHINGLES = 4  # no-space script (CJK, Thai, ...): character shingles
FLAG_TRUNCATED = 8  # longer than max_chars: only the first max_chars characters are compared

FLAG_NAMES = {
    FLAG_EMPTY: "empty",
    FLAG_SHORT: "short",
    FLAG_CHAR_SHINGLES: "char_shingles",
    FLAG_TRUNCATED: "truncated",
}


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


class IncompatibleSignatures(ValueError):
    """Two signatures (or a signature and an index) were made with different hash family, scheme,
    permutations or shingling; their hash values are not comparable and would give silent nonsense."""


@dataclass(frozen=True)
class MinHashSpec:
    num_perm: int = 128
    seed: int = 1
    scheme: str = SCHEME_AFFINE32
    hash_family: str = HASH_XXH32
    shingle_size: int = 5  # words
    char_shingle_size: int = 5  # characters, for scripts written without spaces
    normalization: int = NORMALIZATION_VERSION
    # Not part of the comparability tag: a cap changes which text is compared, not how.
    max_chars: int = field(default=200_000, compare=False)

    def __post_init__(self) -> None:
        if self.scheme not in (SCHEME_AFFINE32, SCHEME_LEGACY):
            raise ValueError(f"unsupported MinHash scheme {self.scheme!r}")
        if self.hash_family not in (HASH_XXH32, HASH_SHA1_32):
            raise ValueError(f"unsupported hash family {self.hash_family!r}")
        if not 2 <= self.num_perm <= 4096:
            raise ValueError("num_perm must be between 2 and 4096")
        if self.shingle_size < 1 or self.char_shingle_size < 1:
            raise ValueError("shingle sizes must be positive")
        if self.max_chars < 1:
            raise ValueError("max_chars must be positive")

    @property
    def tag(self) -> str:
        """Everything that decides whether two signatures are comparable, as one short string."""
        return (
            f"mh:{self.hash_family}:{self.scheme}:p{self.num_perm}:s{self.seed}"
            f":w{self.shingle_size}:c{self.char_shingle_size}:n{self.normalization}"
        )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.scheme == SCHEME_AFFINE32 else np.uint64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MinHashSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def check_compatible(self, other: MinHashSpec | str) -> None:
        other_tag = other if isinstance(other, str) else other.tag
        if other_tag != self.tag:
            raise IncompatibleSignatures(f"signature spec {other_tag!r} does not match {self.tag!r}")


# --- normalisation ---------------------------------------------------------------------------------------

# Scripts written without spaces between words; a "word" there is a whole clause, so word shingles would
# make every sentence one token. Hangul is written with spaces and is not listed.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x2FA1F),  # CJK extensions B-F and supplement
)
_NO_SPACE_RE = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _NO_SPACE_RANGES) + "]")
# Share of no-space-script characters above which a text is shingled by characters.
_NO_SPACE_SHARE = 0.3


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def _ranges(pred) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for cp in range(sys.maxunicode + 1):
        if pred(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, sys.maxunicode))
    return out


@functools.cache
def _fold_res() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    # Built from the Unicode database rather than \W because \W also matches combining marks, which
    # would cut Devanagari or Arabic words apart at every vowel sign. Punctuation, symbols, separators
    # and control characters become a space; invisible format characters (soft hyphen, zero-width
    # joiners, BOM) are dropped so they cannot split or hide a word. Two forms of the same class: sre
    # matches a BMP-only class from a bitmap, about twice as fast as the full one, which needs range
    # checks for astral code points (emoji and other symbols), so the full class runs only when needed.
    cat = unicodedata.category
    space = _ranges(lambda cp: cat(chr(cp))[0] in "PSZ" or cat(chr(cp)) == "Cc")
    bmp = [(a, min(b, 0xFFFF)) for a, b in space if a <= 0xFFFF]
    drop = _ranges(lambda cp: cat(chr(cp)) == "Cf")
    return (
        re.compile(f"[{_char_class(bmp)}]+"),
        re.compile(f"[{_char_class(space)}]+"),
        re.compile(f"[{_char_class(drop)}]+"),
    )


# ASCII is most of what users bring; there folding is one byte-table lookup: letters lowered, digits kept,
# everything else a space (measured 4x faster than a regex substitution on the benchmark set).
_ASCII_TABLE = bytes(
    c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or 48 <= c <= 57) else 32 for c in range(256)
)


def normalize_bytes(text: str) -> bytes:
    """normalize(), as the UTF-8 bytes the shingles are cut from."""
    if text.isascii():
        return b" ".join(text.encode("ascii").translate(_ASCII_TABLE).split())
    bmp_re, full_re, drop_re = _fold_res()
    text = drop_re.sub("", unicodedata.normalize("NFKC", text)).casefold()
    fold = bmp_re if max(text, default=" ") <= "\uffff" else full_re
    return fold.sub(" ", text).strip().encode()


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation/symbols/whitespace folded to single spaces, stripped."""
    return normalize_bytes(text).decode()


def _uses_char_shingles(norm: str) -> bool:
    n = len(_NO_SPACE_RE.findall(norm))
    return n > 0 and n >= _NO_SPACE_SHARE * (len(norm) - norm.count(" "))


def shingles(text: str, spec: MinHashSpec) -> tuple[list[bytes], int]:
    """The shingle bytes of one text and its flags. Shingles repeat if the text repeats; MinHash and
    Jaccard treat them as a set."""
    flat, _counts, flags = shingle_batch([text], spec)
    return flat, int(flags[0])


def shingle_batch(texts: Sequence[str], spec: MinHashSpec) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Shingles of many texts: (all shingles concatenated in text order, count per text, flags per text).

    Word shingles of the whole batch are cut from one joined buffer with the word boundaries found by
    numpy, so the per-shingle Python work is a single bytes slice (measured 2.5x faster than slicing per
    text). Texts in no-space scripts take the per-text character path."""
    n = len(texts)
    flags = np.zeros(n, dtype=np.int32)
    word_docs: list[int] = []
    word_bytes: list[bytes] = []
    char_sh: dict[int, list[bytes]] = {}
    k = spec.shingle_size
    for i, text in enumerate(texts):
        if len(text) > spec.max_chars:
            text = text[: spec.max_chars]
            flags[i] |= FLAG_TRUNCATED
        nb = normalize_bytes(text)
        if not nb:
            flags[i] |= FLAG_EMPTY
        elif not nb.isascii() and _uses_char_shingles(norm := nb.decode()):
            flags[i] |= FLAG_CHAR_SHINGLES
            chars = norm.replace(" ", "")
            kc = spec.char_shingle_size
            if len(chars) <= kc:
                char_sh[i] = [chars.encode()]
                if len(chars) < kc:
                    flags[i] |= FLAG_SHORT
            else:
                char_sh[i] = [chars[j : j + kc].encode() for j in range(len(chars) - kc + 1)]
        else:
            word_docs.append(i)
            word_bytes.append(nb)
    counts = np.zeros(n, dtype=np.int64)
    wflat: list[bytes] = []
    if word_docs:
        wflat, wcounts, n_words = _word_shingles(word_bytes, k)
        idx = np.asarray(word_docs)
        counts[idx] = wcounts
        flags[idx[n_words < k]] |= FLAG_SHORT
    for i, sh in char_sh.items():
        counts[i] = len(sh)
    if not char_sh:
        return wflat, counts, flags
    # Interleave the character-shingled texts back into text order (rare: only no-space scripts).
    flat: list[bytes] = []
    pos = 0
    for i in range(n):
        if i in char_sh:
            flat += char_sh[i]
        elif counts[i]:
            flat += wflat[pos : pos + counts[i]]
            pos += int(counts[i])
    return flat, counts, flags


def shingle_sets(texts: Sequence[str], spec: MinHashSpec) -> list[set[bytes]]:
    """Each text's shingle set, for exact verification of candidates."""
    flat, counts, _ = shingle_batch(texts, spec)
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    return [set(flat[a:b]) for a, b in zip(starts, ends, strict=True)]


def _word_shingles(docs: list[bytes], k: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """k-word shingles of non-empty normalised texts (words joined by single spaces)."""
    lens = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    big = b" ".join(docs)
    spaces = np.flatnonzero(np.frombuffer(big, dtype=np.uint8) == 32)
    word_starts = np.concatenate(([0], spaces + 1))
    word_ends = np.concatenate((spaces, [len(big)]))
    doc_starts = np.concatenate(([0], np.cumsum(lens + 1)[:-1]))
    first = np.searchsorted(word_starts, doc_starts)
    n_words = np.diff(np.append(first, len(word_starts)))
    # A text shorter than one shingle is one shingle of all its words.
    m = np.maximum(n_words - k + 1, 1)
    doc = np.repeat(np.arange(len(docs)), m)
    j = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
    sw = first[doc] + j
    ew = np.minimum(sw + (k - 1), first[doc] + n_words[doc] - 1)
    s, e = word_starts[sw].tolist(), word_ends[ew].tolist()
    return [big[a:b] for a, b in zip(s, e, strict=True)], m, n_words


# --- hashing and permutations ----------------------------------------------------------------------------


def _sha1_32(b: bytes) -> int:
    return int.from_bytes(hashlib.sha1(b).digest()[:4], "little")


def hash_function(family: str):
    """The per-shingle hash, usable as ``datasketch.MinHash(hashfunc=...)`` to reproduce a signature."""
    return xxhash.xxh32_intdigest if family == HASH_XXH32 else _sha1_32


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finalizer, as datasketch applies it once before the affine32 permutations.
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def permutations(spec: MinHashSpec) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) permutation parameters, drawn exactly as datasketch draws them for this seed."""
    gen = np.random.RandomState(spec.seed)
    if spec.scheme == SCHEME_LEGACY:
        pairs = [
            (gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64))
            for _ in range(spec.num_perm)
        ]
        arr = np.array(pairs, dtype=np.uint64).T
        return arr[0].copy(), arr[1].copy()
    a = gen.randint(0, 1 << 31, spec.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, spec.num_perm, dtype=np.uint32)
    return a, b


@dataclass
class Signatures:
    """A batch of signatures: ``values[i]`` belongs to the i-th text; ``flags[i]`` says how it was made."""

    spec: MinHashSpec
    values: np.ndarray  # (n, num_perm), uint32 for affine32, uint64 (32-bit values) for legacy
    flags: np.ndarray  # (n,) int32

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, idx) -> Signatures:
        idx = np.atleast_1d(np.arange(len(self))[idx])
        return Signatures(self.spec, self.values[idx], self.flags[idx])

    @property
    def empty(self) -> np.ndarray:
        return (self.flags & FLAG_EMPTY) != 0


# Shingles per permutation chunk: 8192 x 128 uint32 = 4 MiB, about what stays in cache; measured fastest
# of 512..64k on the benchmark set (64k: 25% slower). Also bounds memory whatever the batch size.
_CHUNK_SHINGLES = 1 << 13


class MinHasher:
    """Computes signatures for batches of texts under one spec. Reuse it: the permutations are drawn once."""

    def __init__(self, spec: MinHashSpec | None = None) -> None:
        self.spec = spec or MinHashSpec()
        self.a, self.b = permutations(self.spec)
        self._hash = hash_function(self.spec.hash_family)
        self._empty_value = _MAX_HASH32 if self.spec.scheme == SCHEME_LEGACY else np.uint32(0xFFFFFFFF)

    def signatures(self, texts: Sequence[str]) -> Signatures:
        flat, counts, flags = shingle_batch(texts, self.spec)
        hashes = np.fromiter(map(self._hash, flat), dtype=np.uint32, count=len(flat))
        return Signatures(self.spec, self.signatures_from_hashes(hashes, counts), flags)

    def signatures_from_shingles(
        self, shingle_lists: Sequence[Sequence[bytes]], flags: np.ndarray | None = None
    ) -> Signatures:
        n = len(shingle_lists)
        counts = np.fromiter((len(s) for s in shingle_lists), dtype=np.int64, count=n)
        total = int(counts.sum())
        flat = (sh for lst in shingle_lists for sh in lst)
        hashes = np.fromiter(map(self._hash, flat), dtype=np.uint32, count=total)
        values = self.signatures_from_hashes(hashes, counts)
        if flags is None:
            flags = np.where(counts == 0, FLAG_EMPTY, 0).astype(np.int32)
        return Signatures(self.spec, values, flags)

    def signatures_from_hashes(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures from the concatenated 32-bit shingle hashes of n documents (``counts[i]`` each)."""
        n = len(counts)
        dtype = self.spec.dtype
        out = np.full((n, self.spec.num_perm), self._empty_value, dtype=dtype)
        ends = np.cumsum(counts)
        starts = ends - counts
        nonempty = np.flatnonzero(counts > 0)
        if self.spec.scheme == SCHEME_AFFINE32:
            hashes = _fmix32(hashes.astype(np.uint32, copy=True))
        else:
            hashes = hashes.astype(np.uint64)
        a, b = self.a, self.b
        # Group whole documents into chunks of about _CHUNK_SHINGLES shingles so reduceat sees each
        # document inside one chunk; a single huge document is a chunk of its own.
        i = 0
        while i < len(nonempty):
            lo_doc = nonempty[i]
            lo = starts[lo_doc]
            j = int(np.searchsorted(ends[nonempty], lo + _CHUNK_SHINGLES, side="right"))
            j = max(j, i + 1)
            docs = nonempty[i:j]
            hi = ends[docs[-1]]
            # Permutations along rows, shingles along columns: reduceat then takes each document's min
            # over a contiguous run of memory, measured twice as fast as the (shingles, perms) layout.
            h = hashes[None, lo:hi]
            if self.spec.scheme == SCHEME_AFFINE32:
                phv = a[:, None] * h  # uint32 wraparound is the intended mod 2^32
                phv += b[:, None]
            else:
                phv = (a[:, None] * h + b[:, None]) % _MERSENNE_PRIME
                phv &= _MAX_HASH32
            out[docs] = np.minimum.reduceat(phv, starts[docs] - lo, axis=1).T
            i = j
        return out


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Share of equal hash values: the MinHash estimate of Jaccard. ``b`` may be one signature or many."""
    eq = np.asarray(a) == np.asarray(b)
    if eq.ndim == 1:
        return float(eq.mean())
    return eq.mean(axis=-1)


def exact_jaccard(a: Iterable[bytes], b: Iterable[bytes]) -> float:
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 0.0  # two empty texts are handled by the exact hash, never by MinHash
    return len(sa & sb) / len(sa | sb)


def to_bytes(values: np.ndarray, spec: MinHashSpec) -> bytes:
    """Compact storage: 4 bytes per permutation in both schemes (legacy values fit 32 bits)."""
    return np.asarray(values, dtype="<u4").tobytes()


def from_bytes(data: bytes, spec: MinHashSpec) -> np.ndarray:
    arr = np.frombuffer(data, dtype="<u4")
    if arr.size != spec.num_perm:
        raise IncompatibleSignatures(f"stored signature has {arr.size} values, spec says {spec.num_perm}")
    return arr.astype(spec.dtype)
