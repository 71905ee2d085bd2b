"""#15: the newcomer demo's ticket text (app/embedded_demo.py) leaked the customer's name and typed a US
phone number with a +1 prefix as UK_NHS. Built from exactly that text, and variants of it."""

from __future__ import annotations

import orjson
import pytest

from app.core.config import PiiSettings
from app.embedded_demo import demo_examples
from app.pii.engine import get_engine
from app.pii.schemas import PiiPolicy
from app.pii.scrub import ScrubInput, scrub_examples

KEY = b"k" * 32
DEMO = ("Customer Priya Raman (priya.r@example.net, +1 415 555 0199) writes: I need to reset a forgotten "
        "password, ticket 1002.")


def _scrub(engine, texts: list[str]) -> list[str]:
    items = [ScrubInput({"prompt": "", "completion": t}, key=str(i), fields=[("completion", t)])
             for i, t in enumerate(texts)]
    return [r.content["completion"] for r in scrub_examples(engine, items, PiiPolicy(), hash_key=KEY)]


def test_the_demo_ticket_is_scrubbed_whole(engine):
    [out] = _scrub(engine, [DEMO])
    assert out == ("Customer <PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) writes: I need to reset a forgotten "
                   "password, ticket 1002.")


def test_the_demo_ticket_is_scrubbed_whole_by_the_small_model_too():
    # bench.pii_eval's sm_custom config: the small model calls "Customer Priya Raman" an ORG.
    [out] = _scrub(get_engine(PiiSettings(spacy_model="en_core_web_sm")), [DEMO])
    assert out.startswith("Customer <PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) writes:")


def test_every_demo_line_keeps_no_name_email_or_phone(engine):
    lines = []
    for line in demo_examples():
        try:
            lines.append(orjson.loads(line)["input"])
        except (orjson.JSONDecodeError, KeyError):
            continue  # the demo's deliberately bad lines
    assert len(lines) > 40
    raw = ["Priya", "Raman", "Maria", "Keller", "John", "Okafor", "415 555 0199", "7946 0958", "555-0147",
           "@example"]
    outs = _scrub(engine, lines)
    leaked = [(v, o) for o in outs for v in raw if v in o]
    assert leaked == []
    assert not any("<UK_NHS>" in o for o in outs)


@pytest.mark.parametrize("text, expected", [
    ("Customer Priya Raman (priya.r@example.net, +1-415-555-0199) writes: x",
     "Customer <PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) writes: x"),
    ("Customer Anjali Deshpande (anjali.d@example.com, +91 98765 43210) writes: x",
     "Customer <PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) writes: x"),
    ("Client Priya Raman (priya.r@example.net, +1 415 555 0199) writes: x",
     "Client <PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) writes: x"),
    ("Customer Wei Zhang (wei.z@example.cn, 001 415 555 0199) writes: x",
     "Customer <PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) writes: x"),
    ("Customer Priya Raman writes: the app crashes.", "Customer <PERSON> writes: the app crashes."),
])
def test_ticket_variants(engine, text, expected):
    assert _scrub(engine, [text]) == [expected]


def test_an_nhs_number_without_a_country_code_is_still_one(engine):
    assert _scrub(engine, ["Patient NHS number 943 476 5919 on file."]) == ["Patient NHS number <UK_NHS> on file."]


def test_a_role_noun_before_an_ordinary_word_is_no_name(engine):
    # The negative twin of the role-noun opener: it only lets a known first name start a name.
    texts = ["Contact Customer Care or the User Guide for help.", "Patient Safety Week starts on Monday."]
    assert _scrub(engine, texts) == texts


@pytest.mark.parametrize("text, expected", [
    # libphonenumber's match took the bracket that opens the aside: "User Sunita Rao (<PHONE_NUMBER>)" lost
    # its "(" to the placeholder.
    ("User Sunita Rao (+1 (415) 555 0199) writes: x", "User <PERSON> (<PHONE_NUMBER>) writes: x"),
    ("User Sunita Rao (+1 415 555 0199) writes: x", "User <PERSON> (<PHONE_NUMBER>) writes: x"),
    ("Call me (+44 20 7946 0958) today.", "Call me (<PHONE_NUMBER>) today."),
    # Negative twin: the area code's own brackets stay inside the number.
    ("Call (415) 555 0199 today.", "Call <PHONE_NUMBER> today."),
])
def test_a_bracket_around_a_phone_stays_in_the_text(engine, text, expected):
    assert _scrub(engine, [text]) == [expected]
