"""Value tokens: a keyed hash (HMAC-SHA256 with a key derived from the service secret) of a scrubbed value.

A token stands for a value without revealing it: equal values (after whitespace and case folding) give equal
tokens in every example and dataset of a deployment, different values different ones. The scrub step
computes one per finding, while it still holds the raw text; nothing else ever sees the value. Tokens are
what dedup compares in place of the scrubbed spans (docs/dedup.md, "The comparison view"), what the PII
report counts values by, and what a curator names to allow a value without seeing it (docs/pii.md).

Type-blind on purpose: a value allowed by its token is allowed whatever type NER gave it, as a value on
the allow list is.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from app.core.config import get_settings

TOKEN_HEX = 16  # 64 bits: no collision expected below billions of distinct values
TOKEN_RE = re.compile(rf"^[0-9a-f]{{{TOKEN_HEX}}}$")
# How a token is written into dedup's comparison text: one word of letters and digits, so normalisation
# and shingling treat it as a word, and no scrubbed text or placeholder looks like it.
VIEW_PREFIX = "piiv"


def token_key(secret: str | None = None) -> bytes:
    # Its own label: a token must not be matched against the `hash` operator's output in scrubbed text, nor
    # against provenance pseudonyms, so it is derived apart from both.
    secret = get_settings().secret_key if secret is None else secret
    return hmac.new(secret.encode(), b"pedigree-pii-value-token-v1", hashlib.sha256).digest()


def normalise(value: str) -> str:
    return " ".join(value.split()).casefold()


def value_token(key: bytes, value: str) -> str:
    return hmac.new(key, normalise(value).encode(), hashlib.sha256).hexdigest()[:TOKEN_HEX]


MAX_VIEW_WORDS = 8
_WORDS = re.compile(r"\w+")


def word_count(value: str) -> int:
    """Words of a value as dedup's normalisation cuts them (punctuation splits), at least 1, capped."""
    return max(1, min(MAX_VIEW_WORDS, len(_WORDS.findall(value))))


def view_words(token: str, words: int | None) -> str:
    """The value as the comparison view writes it: as many words as it had, all derived from its token, so
    "F. Scott Fitzgerald" and "Roger Federer" differ in as many shingles as they do in the text."""
    n = max(1, min(MAX_VIEW_WORDS, words or 1))
    return " " + " ".join(f"{VIEW_PREFIX}{token}" + (f"w{i}" if i else "") for i in range(n)) + " "
