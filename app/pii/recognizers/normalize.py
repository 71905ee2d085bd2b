"""The text the recognizers see, and the way back to the text the scrub cuts.

Detection runs on a normalised copy: look-alike digits (fullwidth "０４９４", Arabic-Indic "٠٤٩٤",
Devanagari...) become ASCII digits, fullwidth ASCII forms ("＠", "（") their ASCII twins, Unicode
hyphens and minus signs "-", odd spaces (no-break, thin, figure) " ", and zero-width characters
(ZWSP, ZWNJ, ZWJ, word joiner, BOM, soft hyphen) and the CR of CRLF are dropped. Without this,
"０４９４ ９２ ８２ ３２" is no phone shape, "jane\u200b@example.com" is no email and "Name:\r\n" puts a CR
into every line-anchored pattern.

Offsets found on the copy are mapped back onto the original, so the scrub removes the original characters,
zero-width ones inside (or right after) a span included. Text that needs none of this (most of it) is passed through as is.
"""

from __future__ import annotations

import bisect
import re

# Deleted: zero-width space/non-joiner/joiner, word joiner, BOM, soft hyphen, Mongolian vowel separator.
_DROP = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"
_SPACES = "\u00a0\u2007\u2009\u202f\u2002\u2003\u2004\u2005\u2006\u2008\u200a\u205f\u3000"
_HYPHENS = "\u2010\u2011\u2012\u2013\u2212\ufe63"
# Non-ASCII decimal digits: `\d` is Unicode-aware in `re`, the lookahead leaves ASCII digits out.
_SPECIAL = re.compile(rf"\r\n?|[{_DROP}{_SPACES}{_HYPHENS}\uff01-\uff5e]|(?![0-9])\d")


def _replacement(ch: str) -> str:
    if ch.startswith("\r"):
        return "\n"
    if ch in _DROP:
        return ""
    if ch in _SPACES:
        return " "
    if ch in _HYPHENS:
        return "-"
    code = ord(ch)
    if 0xFF01 <= code <= 0xFF5E:
        return chr(code - 0xFEE0)
    return str(int(ch))  # a decimal digit of some script


class Normalised:
    """A normalised copy of `original` and the offset map back (None: offsets are the same)."""

    __slots__ = ("_norm_at", "_orig_at", "original", "text")

    def __init__(self, original: str):
        self.original = original
        self._norm_at: list[int] | None = None
        self._orig_at: list[int] = []
        if original.isascii() and "\r" not in original:
            self.text = original
            return
        pieces: list[str] = []
        norm_at: list[int] = []
        orig_at: list[int] = []
        pos = shift = 0
        for m in _SPECIAL.finditer(original):
            rep = _replacement(m.group())
            pieces.append(original[pos : m.start()])
            pieces.append(rep)
            pos = m.end()
            delta = len(rep) - (m.end() - m.start())
            if delta:
                # From this normalised position on, original = normalised + shift.
                shift -= delta
                norm_at.append(m.start() - (shift + delta) + len(rep))
                orig_at.append(shift)
        if not pieces:
            self.text = original
            return
        pieces.append(original[pos:])
        self.text = "".join(pieces)
        if norm_at:
            self._norm_at, self._orig_at = norm_at, orig_at

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a normalised [start, end) span onto the original text. The end maps to where the next
        normalised character starts, so a CRLF or a zero-width character just before it goes with the span."""
        if self._norm_at is None:
            return start, end
        stop = end + self._shift(end) if end < len(self.text) else len(self.original)
        return start + self._shift(start), stop

    def restore(self, results: list) -> list:
        """Move results found on `text` onto `original`, in place."""
        if self._norm_at is not None:
            for r in results:
                r.start, r.end = self.to_original(r.start, r.end)
        return results

    def _shift(self, pos: int) -> int:
        i = bisect.bisect_right(self._norm_at, pos) - 1
        return self._orig_at[i] if i >= 0 else 0
