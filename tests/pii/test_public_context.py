"""#15, fifth round: what the text says about a name or a place (app/pii/recognizers/public.py), list
separators in model spans, long lists of things, and the recall fixes of the same round. Each rule has a
negative twin where it could reach too far."""

from __future__ import annotations

import pytest

from app.pii.schemas import PiiPolicy
from app.pii.scrub import ScrubInput, scrub_examples

KEY = b"k" * 32


def _scrub(engine, texts: list[str], policy: PiiPolicy | None = None) -> list[str]:
    items = [ScrubInput({"text": t}, key=str(i)) for i, t in enumerate(texts)]
    return [r.content["text"] for r in scrub_examples(engine, items, policy or PiiPolicy(), hash_key=KEY)]


LEDES = [
    "Richard Wayne Bogosian (born July 18, 1937) is an American diplomat. Bogosian was ambassador to Chad.",
    "Neale James Cooper (24 November 1963 – 28 May 2018) was a Scottish football player and coach.",
    "Muhammad Ejaz Shafi is a Pakistani politician. Shafi served from 2002 to 2018.",
]


@pytest.mark.parametrize("text", LEDES)
def test_a_reference_work_lede_keeps_its_subject(engine, text):
    assert _scrub(engine, [text]) == [text]


@pytest.mark.parametrize("text, leaked", [
    # A role noun before the name: the lede must open its sentence.
    ("Patient John Miller (born 1961) is an American veteran.", "Miller"),
    # No nationality: "is a retired teacher" describes anyone.
    ("John Miller (born 1961) is a retired teacher from Ohio.", "Miller"),
    # A status anyone has, said in forms too.
    ("Maria Keller is a German citizen living at 12 Oak St.", "Keller"),
    # A cue elsewhere in the text says the text treats the name as a private person's.
    ("Dear Mr. Shafi, Muhammad Ejaz Shafi is a Pakistani politician.", "Shafi"),
])
def test_what_looks_like_a_lede_but_is_not_is_scrubbed(engine, text, leaked):
    [out] = _scrub(engine, [text])
    assert leaked not in out
    assert "<PERSON>" in out


def test_a_lede_is_scrubbed_under_public_entities_scrub(engine):
    [out] = _scrub(engine, [LEDES[0]], PiiPolicy(public_entities="scrub"))
    assert "Bogosian" not in out


@pytest.mark.parametrize("text", [
    "He won the Daniel J. Epstein Engineering Management Award in 2004.",
    "The team visited Austin E. Lathrop High School in Fairbanks.",
    "The park lies between the Upper West Side and the Upper East Side.",
    "Alaska is the best US state to see the Northern Lights.",
])
def test_things_named_after_people_or_places_stay(engine, text):
    assert _scrub(engine, [text]) == [text]


def test_a_surname_that_is_also_a_place_word_is_still_a_name(engine):
    [out] = _scrub(engine, ["Please call Mrs. Hall about the Kenny Park invoice."])
    assert "Hall" not in out


def test_a_dash_between_spaces_separates_names_but_a_hyphen_in_a_name_does_not(engine):
    [out] = _scrub(engine, ["- Doug Bannister - Laura Kuenssberg - Caroline Lucas"])
    assert out.count("<PERSON>") == 3 and out.startswith("- <PERSON> - ")
    [out] = _scrub(engine, ["Mary-Jane Whitcombe called about her order."])
    assert out == "<PERSON> called about her order."


def test_a_long_list_of_towns_does_not_become_people(engine):
    text = "Boston Metro West cities include Newton, Natick, Framingham, Wellesley, Dedham, and Needham."
    [out] = _scrub(engine, [text])
    for town in ("Natick", "Framingham", "Wellesley", "Dedham"):
        assert town in out


def test_a_short_list_of_names_still_spreads(engine):
    [out] = _scrub(engine, ["Mary, Ariana, Isabel and Jodi went to the lake."])
    assert out == "<PERSON>, <PERSON>, <PERSON> and <PERSON> went to the lake."


def test_a_name_no_gazetteer_knows_on_an_address_label(engine):
    [out] = _scrub(engine, ["Duqyaha Karataev\n\n3657 Laukaantie 80\n Apt. 030\n KOKKOLA"])
    assert "Duqyaha" not in out and "Karataev" not in out


def test_a_heading_over_a_street_line_is_no_name(engine):
    [out] = _scrub(engine, ["Opening Hours\n12 Baker Street"])
    assert out.startswith("Opening Hours\n")


def test_the_answer_to_a_question_for_a_name(engine):
    [out] = _scrub(engine, ["Bot: What's the name on the account? User: Eve Magrath"])
    assert out == "Bot: What's the name on the account? User: <PERSON>"
    [out] = _scrub(engine, ["Agent: Who am I speaking with? Caller: Ruaridh Moe"])
    assert out == "Agent: Who am I speaking with? Caller: <PERSON>"


def test_a_question_for_the_name_of_a_thing_is_no_cue(engine):
    [out] = _scrub(engine, ["What is the name of the river? The Danube."])
    assert "The " in out


def test_a_speech_verb_aimed_at_someone_marks_its_subject(engine):
    [out] = _scrub(engine, ['Duqyaha shouted at Janet: "What are you doing here?"'])
    assert "Duqyaha" not in out


def test_a_listed_figure_keeps_the_later_surname_mention(engine):
    text = "Thomas Jefferson was the third president. In 1801, Jefferson was inaugurated."
    assert _scrub(engine, [text]) == [text]


def test_a_private_person_sharing_a_listed_surname_is_scrubbed(engine):
    [out] = _scrub(engine, ["Ana Jefferson called. Jefferson wants a refund."])
    assert "Jefferson" not in out


@pytest.mark.parametrize("text", [
    "Georg Friedrich Parrot was born on July 15, 1767 in Montbeliard. Parrot studied physics.",
    "Harvey Marion LaFollette (September 8, 1858 – September 20, 1929) taught school in Indiana.",
])
def test_a_person_dated_beyond_privacy_law_is_kept(engine, text):
    assert _scrub(engine, [text]) == [text]


@pytest.mark.parametrize("text, leaked", [
    ("Richard Brandon Morris was born on July 24, 1904. He attended City College.", "Morris"),
    ("Anna Maria Kowalski (born 1950) lives in Warsaw.", "Kowalski"),
    ("Jan Erik Holm (1940 – 2001) left his estate to his nephew.", "Holm"),
])
def test_a_person_who_may_be_alive_or_recently_dead_is_scrubbed(engine, text, leaked):
    assert leaked not in _scrub(engine, [text])[0]
