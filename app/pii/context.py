"""Where a text is code: the spans in which the name finders are not run (docs/pii.md, "Code spans").

NER reads `Java` as a person, `range(1` as a place and `num1` as whatever it likes; a code block holds
identifiers, not people. Pure functions over a string, no model: cheap enough to run on every field.

* fenced blocks (``` or ~~~, the fence lines included; an unclosed fence runs to the end of the text);
* inline code (`x`, ``x``) on one line;
* indented blocks (4 spaces or a tab, after a blank line or the start) of which most lines read as code;
* with `lines="auto"`, every code-like line in a field where most non-blank lines are code-like (a bare
  code answer); with `lines="on"`, every code-like line anywhere (code datasets). Prose stays prose: a
  line that reads as a sentence is never code, so NER keeps running on ordinary text.
"""

from __future__ import annotations

import re
from typing import Literal

Span = tuple[int, int]

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*$", re.MULTILINE)
_INLINE = re.compile(r"(?<!`)(`{1,2})(?!`)([^`\n]+?)(?<!`)\1(?!`)")

_KEYWORD_START = re.compile(
    r"^(?:(?:def|class|import|return|elif|else|try|except|finally|with|lambda|async|await|yield|raise|pass|"
    r"break|continue|namespace|package|public|private|protected|static|final|void|int|long|short|float|"
    r"double|char|bool|boolean|string|String|auto|const|let|var|function|func|fn|impl|struct|enum|interface|"
    r"trait|module|require|export|echo|print|printf|println|SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|"
    r"FROM|WHERE|JOIN|GROUP\s+BY|ORDER\s+BY|HAVING|LIMIT|VALUES|SET)\b|from\s+[\w.]+\s+import\b|#include|#define|#import|#!|using\s+namespace|"
    r"type\s+\w+\s*=|console\.|System\.|std::|fmt\.|if\s*\(|for\s*\(|while\s*\(|switch\s*\(|catch\s*\(|"
    r"do\s*\{|@\w+(?:\(|$)|<\?php|<!DOCTYPE|<[a-zA-Z][\w-]*(?:\s[^>]*)?/?>|</[a-zA-Z]|\$\s|>>>)"
)
# Lines that are code whatever follows: preprocessor, shebang, imports, shell control words.
_DIRECTIVE = re.compile(
    r"^(?:#include|#define|#import|#pragma|#!|(?:SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(?:TABLE|INDEX|VIEW)|ALTER\s+TABLE|DROP\s+TABLE|WHERE|FROM|(?:LEFT\s+|RIGHT\s+|INNER\s+)?JOIN|"
    r"GROUP\s+BY|ORDER\s+BY|HAVING|LIMIT|VALUES)\s+(?!:)\S|[A-Z_][A-Z0-9_]*=\S|"
    r"(?:sudo\s+)?(?:find|grep|ls|cd|mkdir|rm|cp|mv|chmod|chown|npm|npx|yarn|pip3?|git|docker|kubectl|curl|wget|"
    r"node|python3?|javac?|gcc|g\+\+|make|du|sort|head|tail|wc|cat|awk|sed|export|source|sh|bash|tar|ssh|scp)"
    r"\s+(?=\S*[-/.$|*'\"])\S|using\s+namespace\b|import\s+[\w.]+(?:\s+as\s+\w+)?\s*;?$|"
    r"import\s+[\w.{*]|from\s+[\w.]+\s+import\b|package\s+[\w.]+;|require\(|"
    r".*;\s*(?:do|then)$|[\w$.]+\((?:[^()]|\([^()]*\))*\)\s*;?\s*(?:#.*|//.*)?$)"
)
_QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
# Statements that stand alone on a line.
_BARE = frozenset({"fi", "done", "esac", "else", "else:", "try:", "finally:", "pass", "break", "continue", "end", "return", "}", "};", "{", ")", "]", "});", "})", "end;"})
_PY_BLOCK = re.compile(r"^(?:if|for|while|elif|else|with|def|class|try|except)\b.*:\s*(?:#.*)?$")
# `#` also opens a markdown heading, so a `#` line is code only next to other code (see _code_lines).
_HASH_COMMENT = re.compile(r"^#(?!include|define|import|!)")
_COMMENT = re.compile(r"^(?://|/\*|\*/|--\s|<!--)")
_END = re.compile(r"(?:[;{}]|\)\s*:|\)\s*\{|=>|->|\\|,)\s*(?://.*)?$")
_ASSIGN = re.compile(r"^(?:[a-z_$][\w$]*|[A-Za-z_$][\w$]*[._\[\d][\w$.\[\]'\"]*)(?:\s*,\s*[A-Za-z_$][\w$]*)*\s*"
                     r"(?:[+\-*/%|&^]|<<|>>|\?\?)?=(?!=)\s*\S")
_CALL = re.compile(r"[A-Za-z_$][\w$.]*\((?:[^()]|\([^()]*\))*\)")
_OPERATOR = re.compile(r"==|!=|<=|>=|\+=|-=|\*=|/=|=>|->|::|&&|\|\||\+\+|--(?=\w)|<<|>>|\w\[\w*\]|\w\.\w+\(")
_TIGHT_CALL = re.compile(r"[a-z_$][\w$.]*\([^)]*\)")
_IDENT = re.compile(r"\b[a-z]+[A-Z]\w*\b|\b[A-Za-z]+_\w+\b|\b[A-Za-z]+\d+\b")  # camelCase, snake_case, num1
_BRACES = re.compile(r"[{}]|\[\s*\]|\[\d+\]")
_WORD = re.compile(r"[A-Za-z]+")
_STOP = frozenset(
    ["the", "a", "an", "and", "or", "of", "to", "in", "is", "are", "was", "were", "be", "been", "it", "that", "this", "for", "on", "with", "as", "at", "by", "from", "you", "your", "i", "we", "they", "he", "she", "not", "do", "does", "did", "have", "has", "had", "can", "will", "would", "should", "what", "which", "who", "how", "my", "me", "our", "its", "their", "there", "here", "when", "where", "why", "also", "but", "so", "if", "then", "than", "into", "about"]
)


def _prose(line: str) -> bool:
    """A sentence: several words, mostly letters, function words among them (string literals left out:
    `print('This is an example')` is a call, not a sentence)."""
    line = _QUOTED.sub('""', line)
    words = _WORD.findall(line)
    if (len(words) < 6 or _IDENT.search(line) or _OPERATOR.search(line) or _TIGHT_CALL.search(line)
            or _ASSIGN.match(line.strip())):
        return False
    stop = sum(1 for w in words if w.lower() in _STOP)
    letters = sum(c.isalpha() or c.isspace() for c in line)
    return stop / len(words) >= 0.2 and letters / len(line) >= 0.85


def _signals(s: str) -> int:
    operators = min(2, len(set(_OPERATOR.findall(s))))  # `factorial :: Integer -> Integer`
    return (bool(_END.search(s)) + bool(_CALL.search(s)) + operators + bool(_IDENT.search(s))
            + bool(_BRACES.search(s)) + bool(_ASSIGN.match(s)))


# A comment after a statement on the same line (`return a + b;  // Fix the operator`): its words are no
# sentence that makes the statement prose. Whitespace before the mark keeps `http://` out.
_TRAILING_COMMENT = re.compile(r"\s(?://|#)\s")


def code_like(line: str) -> bool:
    """One line that reads as code: a keyword opening with a code mark, or two marks among a statement end
    (`;`, `{`, `}`, `):`), a call, an operator (`==`, `+=`, `->`, `x[i]`, `a.b(`), an identifier shape
    (camelCase, snake_case, `num1`), braces, an assignment; never a sentence that lacks a statement end.
    A statement followed by a comment is code whatever the comment says."""
    s = line.strip()
    if not s:
        return False
    m = _TRAILING_COMMENT.search(s)
    if m and m.start() > 0 and _statement(s[: m.start()].strip()):
        return True
    return _statement(s)


def _statement(s: str) -> bool:
    if not s:
        return False
    if _COMMENT.match(s) or s in _BARE or _DIRECTIVE.match(s):
        return True
    prose = _prose(s)
    if prose and not s.endswith((";", "{", "}")):
        return False
    n = _signals(s)
    if s.endswith((";", "{", "}")):
        return not prose or n >= 2
    if _PY_BLOCK.match(s):
        return True
    if _KEYWORD_START.match(s):
        return n >= 1 or bool(_QUOTED.search(s))
    if _ASSIGN.match(s):
        # `total = 0`, `url = '...'`, `s = (a + b) / 2`: an expression, not words, on the right.
        rhs = _QUOTED.sub('""', s.split("=", 1)[1])
        if len(_WORD.findall(rhs)) <= 4 or any(c in rhs for c in "()[]{}\"'0123456789+-*/%"):
            return True
    return n >= 2


def _lines(text: str) -> list[tuple[int, int, str]]:
    out, pos = [], 0
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        out.append((pos, pos + len(body), body))
        pos += len(raw)
    return out


def _fenced(text: str) -> list[Span]:
    spans: list[Span] = []
    opened: tuple[int, str] | None = None
    for m in _FENCE.finditer(text):
        fence = m.group(1)
        if opened is None:
            opened = (m.start(), fence)
        elif fence[0] == opened[1][0] and len(fence) >= len(opened[1]) and not m.group().strip()[len(fence):]:
            spans.append((opened[0], m.end()))
            opened = None
    if opened is not None:
        spans.append((opened[0], len(text)))
    return spans


def _inside(pos: int, spans: list[Span]) -> bool:
    return any(s <= pos < e for s, e in spans)


def _indented(lines: list[tuple[int, int, str]], taken: list[Span]) -> list[Span]:
    spans: list[Span] = []
    i = 0
    while i < len(lines):
        start, _, body = lines[i]
        opens = body.startswith(("    ", "\t")) and body.strip() and (i == 0 or not lines[i - 1][2].strip())
        if not opens or _inside(start, taken):
            i += 1
            continue
        j = i
        while j < len(lines) and (lines[j][2].startswith(("    ", "\t")) or not lines[j][2].strip()):
            j += 1
        block = [b for _, _, b in lines[i:j] if b.strip()]
        if sum(code_like(b) or bool(_HASH_COMMENT.match(b.strip())) for b in block) * 2 > len(block):
            end = max(e for _, e, b in lines[i:j] if b.strip())
            spans.append((start, end))
        i = j
    return spans


# A Python (or Ruby, CoffeeScript...) definition header: `def name(...):`, `class Name(Base):`.
_DEF_HEADER = re.compile(r"^(?:async\s+)?(?:def|class)\s+[A-Za-z_]\w*\s*(?:\([^\n]*\))?\s*(?:->[^\n:]+)?:\s*(?:#.*)?$")


_DEF_OPEN = re.compile(r"^(?:async\s+)?(?:def|class)\s+[A-Za-z_]\w*\s*[(:]")


def _suites(lines: list[tuple[int, int, str]], taken: list[Span]) -> list[Span]:
    """A definition header and every line indented deeper under it: the function or class whole, with its
    docstring, comments and string literals. Those read as prose line by line ("Return a Traceback
    instance.", "Calculate the Julian day...") but are part of the code (#15, fourth round: standard-library
    functions, tune half)."""
    spans: list[Span] = []
    i = 0
    while i < len(lines):
        start, end, body = lines[i]
        if _inside(start, taken) or not _DEF_OPEN.match(body.strip()):
            i += 1
            continue
        # A header whose parameters run over several lines ends where its brackets close.
        header, h = body.strip(), i
        while header.count("(") > header.count(")") and h + 1 < min(len(lines), i + 12):
            h += 1
            header += " " + lines[h][2].strip()
        if not _DEF_HEADER.match(header):
            i += 1
            continue
        end = lines[h][1]
        indent = len(body) - len(body.lstrip())
        j, last = h + 1, end
        while j < len(lines):
            b = lines[j][2]
            if b.strip():
                if len(b) - len(b.lstrip()) <= indent:
                    break
                last = lines[j][1]
            j += 1
        if last > end:  # a header with no suite under it is one code-like line, no block
            spans.append((start, last))
        i = j
    return spans


# In code datasets, a quoted identifier inside prose ("the built-in function 'max'", "the 'Name'
# placeholder") is code too.
# A spread or splat mark may lead it ("takes '...args'", "'*args'").
_QUOTED_IDENT = re.compile(r"(?<![\w'\"])(['\"])(?:\.\.\.|\*{1,2})?[A-Za-z_$][\w$.]*(?:\(\))?\1(?![\w'\"])")
# ... and so is a bare identifier shape ("num1", "max_value", "parseInt", "java.util.Scanner",
# "System.Security.Cryptography"), or a lower-case word in parentheses ("a sorted list (arr)"): no name has
# one. A qualified name needs two letters a part, so "U.S." and "J.R.R." stay prose.
_PROSE_IDENT = re.compile(r"\b[a-z]+[A-Z]\w*\b|\b[A-Za-z]+_\w+\b|\b[A-Za-z]+\d+\b|\b[a-z]\w*(?:\.[a-z_]\w*)+\b|"
                          r"\b[A-Z][\w$]+(?:\.[A-Z][\w$]+)+\b|(?<=\()[a-z_$][\w$]*(?=\))")
# A data line ("firstName: John", "max_retries: 3"): a key with an identifier shape, a colon, a value. Only
# in code datasets: in ordinary text "first_name: Ann" is a person's record, which the record rules scrub.
_KEY_VALUE = re.compile(r"^[ \t-]*[\"']?(?:[a-z]+[A-Z]\w*|[A-Za-z]+_\w+)[\"']?\s*:\s*\S")


def _code_lines(lines: list[tuple[int, int, str]], taken: list[Span], mode: str) -> list[Span]:
    candidates = [(s, e, b) for s, e, b in lines if b.strip() and not _inside(s, taken)]
    if not candidates:
        return []
    flags = [code_like(b) or mode == "on" and bool(_KEY_VALUE.match(b)) for _, _, b in candidates]
    if mode == "auto" and sum(flags) * 2 <= len(candidates):
        return []
    # A short line next to code ("else", "end", "main()", a lone identifier) and a `#` comment go with
    # their block, and so does a line with one code mark between two code lines (`GROUP BY p.category_id`,
    # `{ id: 1, name: 'Jane' }`). Until nothing changes, so a run of comments above a block joins it.
    changed = True
    while changed:
        changed = False
        for k, (_, _, b) in enumerate(candidates):
            comment = bool(_HASH_COMMENT.match(b.strip()))
            if flags[k] or (_prose(b) and not comment):
                continue
            short = len(_WORD.findall(b)) <= 3
            before = k > 0 and flags[k - 1]
            after = k + 1 < len(flags) and flags[k + 1]
            if ((short or comment) and (before or after)
                    or before and after and _signals(b.strip()) >= 1):
                flags[k] = changed = True
    spans = [(s, e) for (s, e, _), f in zip(candidates, flags) if f]
    if mode == "on":
        for (s, _, b), f in zip(candidates, flags):
            if not f:
                spans.extend((s + m.start(), s + m.end()) for m in _QUOTED_IDENT.finditer(b))
                spans.extend((s + m.start(), s + m.end()) for m in _PROSE_IDENT.finditer(b))
    return spans


def code_spans(text: str, *, blocks: bool = True, lines: Literal["off", "auto", "on"] = "auto") -> list[Span]:
    """Disjoint, sorted (start, end) spans of `text` that are code."""
    if not blocks and lines == "off":
        return []
    has_marks = "`" in text or "~~~" in text
    spans: list[Span] = []
    if blocks and has_marks:
        spans.extend(_fenced(text))
    split = None
    if blocks and ("    " in text or "\t" in text):
        split = _lines(text)
        spans.extend(_indented(split, spans))
        if "def " in text or "class " in text:
            spans.extend(_suites(split, spans))
    if lines != "off":
        split = split if split is not None else _lines(text)
        spans.extend(_code_lines(split, spans, lines))
    if blocks and "`" in text:
        spans.extend((m.start(), m.end()) for m in _INLINE.finditer(text) if not _inside(m.start(), spans))
    return _merge(spans)


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def overlaps(start: int, end: int, spans: list[Span]) -> bool:
    return any(s < end and start < e for s, e in spans)
