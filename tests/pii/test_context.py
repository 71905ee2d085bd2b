"""Code spans, secrets, the built-in allow list and public entities (docs/pii.md)."""

from __future__ import annotations

import base64
import json

import pytest

from app.pii.context import code_like, code_spans
from app.pii.schemas import PiiPolicy
from app.pii.scrub import ScrubInput, scrub_examples

KEY = b"k" * 32


def _scrub(engine, text: str, **policy) -> tuple[str, list]:
    [res] = scrub_examples(engine, [ScrubInput({"prompt": text, "completion": ""}, "k")], PiiPolicy(**policy),
                           hash_key=KEY)
    return res.content["prompt"], res.findings


# --- where code is -------------------------------------------------------------------------------------------


def _covered(text: str, **kw) -> list[str]:
    return [text[s:e] for s, e in code_spans(text, **kw)]


def test_fenced_inline_and_indented_blocks():
    text = "Call `range(1, n)` here.\n\n```python\nfor i in range(1, number + 1):\n    print(i)\n```\nDone."
    spans = _covered(text)
    assert "`range(1, n)`" in spans
    assert any(s.startswith("```python") and s.endswith("```") for s in spans)
    assert "Done." not in "".join(spans) and "Call" not in "".join(spans)
    indented = "Example:\n\n    total = 0\n    for x in xs:\n        total += x\n\nThat is all."
    assert any("total += x" in s for s in _covered(indented, lines="off"))
    # An indented paragraph of prose is not code.
    prose = "Intro:\n\n    This paragraph is indented but it is a sentence about Maria Garcia and her work.\n"
    assert _covered(prose, lines="off") == []


def test_unclosed_fence_and_crlf():
    text = "Here:\r\n```\r\nname = 'Java'\r\nprint(name)\r\n"
    [span] = _covered(text)
    assert span.startswith("```") and "print(name)" in span


def test_code_lines_auto_on_and_prose():
    bare = "def area(w, h):\n    return w * h\n\nprint(area(5, 8))"
    covered = "\n".join(_covered(bare, lines="auto"))
    assert all(line in covered for line in bare.splitlines() if line)  # the def and its suite are one span
    mixed = "Tom Jones met Anna in Paris last summer, and they talked about the weather.\nx = 1;"
    assert _covered(mixed, lines="auto") == []  # most lines are prose: nothing outside a fence is code
    assert _covered(mixed, lines="on") == ["x = 1;"]
    assert _covered(bare, blocks=False, lines="off") == []
    for line in ["int[] arr = {4, 5, 6};", "for i in range(1, number + 1):", "#include <iostream>",
                 "cout << \"Area: \" << area << endl;", "num1 = int(input())", "}", "import pandas as pd"]:
        assert code_like(line), line
    for line in ["Tiger Woods won the Masters in 1997 and again in 2019.", "What can you do",
                 "I will be travelling to France next week, so I need my passport by then",
                 "Independence Day (1999) Dune (2021) Solaris (2002)", "Water, food, Knife, First Aid Kit,"]:
        assert not code_like(line), line


def test_code_in_prose_of_code_datasets():
    # GPTeacher shapes the `code` profile used to leave to NER.
    assert code_like("    return a + b;  // Fix the subtraction operator to addition operator")
    assert not code_like("See http://example.com # and the rest is a plain sentence about it here")
    text = ("It takes '...args' and a sorted list (arr); use the System.Security.Cryptography namespace.\n"
            "firstName: John\nlastName: Doe\nage: 30")
    covered = _covered(text, lines="on")
    for part in ("'...args'", "arr", "System.Security.Cryptography", "firstName: John", "lastName: Doe"):
        assert part in covered, part
    # Not in ordinary text: there a "first_name: Ann" line is a person's record.
    assert _covered("first_name: Ann\nlast_name: Ray\nhome: Leeds", lines="auto") == []
    # Initials and abbreviations are no qualified names.
    assert _covered("J.R.R. Tolkien lived in the U.S. for a while, said Mr. Smith today.", lines="on") == []


# --- the engine around code -----------------------------------------------------------------------------------


def test_code_is_not_rewritten_by_the_name_finders(engine):
    code = ("public class Main {\n    public static void main(String[] args) {\n        String name = \"Java\";\n"
            "        for (int i = 0; i < len(num1); i++) {\n            System.out.println(max(i, 3));\n        }\n"
            "    }\n}")
    out, findings = _scrub(engine, code)
    assert out == code and findings == []
    py = "for i in range(1, number + 1):\n    print(Python, i)\n"
    assert _scrub(engine, py)[0] == py


def test_validated_patterns_still_run_inside_code(engine):
    code = ("```python\nowner = 'Maria Garcia'\nemail = \"maria.garcia@example.org\"\n"
            "AWS_ACCESS_KEY_ID = 'AKIAQ4Z7ERTY5UIOPLKJ'\ncard = '4111 1111 1111 1111'\n```")
    out, findings = _scrub(engine, code)
    types = {f.entity_type for f in findings}
    assert {"EMAIL_ADDRESS", "SECRET", "CREDIT_CARD"} <= types
    assert "maria.garcia@example.org" not in out and "AKIAQ4Z7ERTY5UIOPLKJ" not in out
    assert "Maria Garcia" in out  # a name finder does not run in code, by design


def test_prose_around_code_is_still_scrubbed(engine):
    text = "Ask Maria Garcia (maria@x.org) about it:\n```\nx = compute(Maria)\n```\nMaria Garcia wrote it."
    out, _ = _scrub(engine, text)
    assert out.count("Maria Garcia") == 0 and "x = compute(Maria)" in out


def test_code_rules_off(engine):
    code = "```\nprint(\"Maria Garcia\")\n```"
    out, _ = _scrub(engine, code, context={"code_spans": False, "code_lines": "off"})
    assert "Maria Garcia" not in out


# --- secrets ----------------------------------------------------------------------------------------------------


def _jwt() -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': '1234567890', 'name': 'x'})}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


@pytest.mark.parametrize("secret", [
    "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
    "AIza" + "SyD3x4mpl3K3yV4lu3Th4tI5L0ng3n0ugh12",
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\nq1w2e3r4t5y6\n-----END RSA PRIVATE KEY-----",
])
def test_secret_shapes(engine, secret):
    out, findings = _scrub(engine, f"token: {secret}\n")
    assert secret not in out and any(f.entity_type == "SECRET" for f in findings)


def test_jwt_and_assigned_secrets(engine):
    token = _jwt()
    out, _ = _scrub(engine, f"curl -H 'Authorization: Bearer {token}' https://api")
    assert token not in out
    out, _ = _scrub(engine, 'db_password = "Zq8rT2vLx9Wm"\napi_key = "your_api_key_here"\n')
    assert "Zq8rT2vLx9Wm" not in out and "your_api_key_here" in out  # a placeholder is not a secret
    fake = "eyJhbGciOiJIUzI1NiJ9x.eyJub3Rqc29uIjp0cnVlfQ.abcdefghijklmnopqrst"
    assert _scrub(engine, f"value {fake}")[0].endswith(fake)  # first part is not a JSON header


# --- allow list and public entities ------------------------------------------------------------------------------


def test_builtin_allow_list(engine):
    text = "Implement a Java function in Python, then eat Granny Smith apples and look at the Moon."
    out, findings = _scrub(engine, text)
    assert out == text, findings
    out, _ = _scrub(engine, text, context={"builtin_allow_list": False})
    assert out != text


def test_a_cue_beats_the_allow_list(engine):
    out, _ = _scrub(engine, "Dear Mr. Ford, thanks for the call.")
    assert "Ford" not in out


def test_placeholder_names_and_tools_are_allowed(engine):
    text = "This would extract the value 'John Doe'. Test the API using a tool like Postman or Curl."
    assert _scrub(engine, text, context={"code_lines": "on"})[0] == text
    assert "John Doe" not in _scrub(engine, "Hello, my name is John Doe.")[0]  # a cue still wins


def test_public_entities_keep_and_scrub(engine):
    text = "Albert Einstein was born in Germany and later lived in Princeton and Paris."
    kept, _ = _scrub(engine, text)
    assert kept == text
    scrubbed, _findings = _scrub(engine, text, public_entities="scrub")
    assert "Einstein" not in scrubbed and "Germany" not in scrubbed and "Paris" not in scrubbed
    # A private name next to public ones is still found.
    out, _ = _scrub(engine, "Albert Einstein met Csanád Gere in Paris.")
    assert "Csanád Gere" not in out and "Paris" in out and "Albert Einstein" in out
    # A place of several words typed PERSON is the place; a one-word one may be a person ("Georgia").
    from app.pii.allow import AllowFilter
    allow = AllowFilter([], builtin=True, keep_public=True)
    assert allow.allowed("PERSON", "Sri Lanka") and allow.allowed("PERSON", "Hong Kong")
    assert not allow.allowed("PERSON", "Georgia") and not allow.allowed("PERSON", "Sri Lanka", cue=True)
    assert not AllowFilter([], builtin=True, keep_public=False).allowed("PERSON", "Sri Lanka")
    # A city that is also a first name is not kept on NER's word alone.
    from app.pii.allow import public_places
    assert "tyler" not in public_places() and "paris" in public_places() and "canada" in public_places()


def test_a_definition_is_code_with_its_docstring():
    """#15, fourth round (standard-library functions): docstrings and comments under `def` read as prose
    line by line ("Return a Traceback instance.") but belong to the function; so do parameters that run
    over several lines."""
    from app.pii.context import code_spans

    text = ('Try the following code:\n\ndef create_default_context(purpose=None, *, cafile=None,\n'
            '                           capath=None):\n    """Create a SSLContext object with default settings.\n'
            '\n    Calculate the Julian day, as Jython does.\n    """\n    return purpose\n\nThat is all.')
    spans = code_spans(text)
    start = text.index("def ")
    assert any(s <= start and text.index("return purpose") < e for s, e in spans)
    assert not any(s <= text.index("That is all") < e for s, e in spans)
    assert not any(s <= text.index("Try the") < e for s, e in spans)
    # A header alone is no block.
    assert code_spans("def of the word: a meaning.") == []
