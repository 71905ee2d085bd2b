"""Regression tests for the leaks of issue #15, each built from the failing case (or the shape the issue
describes), with a negative twin where the fix could over-reach."""

from __future__ import annotations

import pytest

from app.pii.schemas import PiiPolicy


def _found(engine, text, entities=None):
    policy = PiiPolicy(entities=entities) if entities else PiiPolicy()
    [results] = engine.analyze_batch([text], policy)
    return {(r.entity_type, text[r.start : r.end]) for r in results}


def _values(engine, text, entity_type):
    return {v for t, v in _found(engine, text) if t == entity_type}


# --- phone numbers never cross a line break -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, phone",
    [
        # The case: a postcode line, then the phone; the candidate used to span both lines and be
        # thrown away whole.
        ("Kalman Ferenc\n12 Main St\nDENVER, CO 00336\n455 6186-Office", "455 6186"),
        ("Gregory Kudryashov\n Suite 282\n Domoszló\n Hungary 34796\n(37) 788-063-Office\\,07700 063 966-Fax",
         "(37) 788-063"),
        ("Lara Pottinger\n Apt. 236\n Portugal 30971\n21 253 109 8211-Office", "21 253 109 8211"),
    ],
)
def test_phone_after_a_postcode_line(engine, text, phone):
    assert phone in _values(engine, text, "PHONE_NUMBER")


def test_phone_candidates_stay_on_their_line(engine):
    text = "Postcode 00336\n455 6186 is the office line"
    assert not any("\n" in v for v in _values(engine, text, "PHONE_NUMBER"))


# --- identifiers are typed by what names them ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["Your order 4839201 has shipped", "account number 1234567 is closed", "customer ID: 7712093 was merged",
     "order 060426070011 shipped", "Ticket #5512093 is resolved"],
)
def test_seven_digit_identifiers_are_not_phones(engine, text):
    assert not _values(engine, text, "PHONE_NUMBER")


@pytest.mark.parametrize(
    "text, phone",
    [("Please call 4839201 tonight", "4839201"), ("customer ID: 7712093, call 555 1234", "555 1234"),
     ("I would like to stop receiving messages to 699 956 915", "699 956 915")],
)
def test_phones_next_to_identifier_words_still_found(engine, text, phone):
    assert phone in _values(engine, text, "PHONE_NUMBER")


def test_luhn_valid_number_named_a_card_outside_the_issuer_table(engine):
    text = "What is procedure to redeem points won on credit card 060426070011 transactions ?"
    assert "060426070011" in _values(engine, text, "CREDIT_CARD")
    assert not _values(engine, "order 060426070011 shipped", "CREDIT_CARD")


# --- speaker labels ----------------------------------------------------------------------------------------


def test_speaker_label_without_a_space_after_the_colon(engine):
    text = 'Kalman: "Where were you?"\nJordan:"I\'m not telling."'
    persons = _values(engine, text, "PERSON")
    assert "Kalman" in persons
    assert any(v.startswith("Jordan") for v in persons)


def test_single_speaker_label_opening_a_quotation(engine):
    assert "Kalman" in _values(engine, 'Kalman: "Where were you last night?"', "PERSON")


@pytest.mark.parametrize("text", ["Summary: the plan\nTime:10:00", "Overview:\nhttp://example.com",
                                  "Pricing: see below"])
def test_headings_are_not_speakers(engine, text):
    assert not _values(engine, text, "PERSON")


def test_a_list_of_fields_is_not_a_transcript(engine):
    # GPTeacher: a method described field by field read as four speakers.
    fields = ("Access Modifier: private - only inside the class.\n Modifier: static - belongs to the class.\n"
              " Return Type: int - an integer.\n Arguments List: (int a, int b) - two integers.")
    assert not _values(engine, fields, "PERSON")
    # Three people speaking once each are still three speakers: their labels hold first names.
    talk = "Anna: shall we start?\nBoris: yes, go ahead.\nKalman: fine by me."
    assert {"Anna", "Boris", "Kalman"} <= set(_values(engine, talk, "PERSON"))


# --- names without a model-friendly shape ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name",
    [
        ("Ciset lives on Rua Mina 50 street.", "Ciset"),
        ("Ley began writing as a teenager, publishing her first story in 2007.", "Ley"),
        ("Csanád P Gere lives at 254 Damvergi Street, Nicosia", "Csanád P Gere"),
        ("bártová began writing as a teenager, publishing her first story.", "bártová"),
        ("my name is vitoria", "vitoria"),
        ("sometimes people call me višeslav", "višeslav"),
        ("she was born on 8/5/1989. her maiden name is nyberg", "nyberg"),
        ("My great great grandfather was called Djevad Šušulić, and my grandmother was called Erin Dale",
         "Djevad Šušulić"),
        ("Microbilt is the brainchild of our 3 founders: Kónya, Becker and Vasquez.", "Vasquez"),
        ("Microbilt is the brainchild of our 3 founders: Kónya, Becker and Vasquez.", "Kónya"),
        ("The verses from Pinabel Marcil's Cautionary Tales. Is there a better example than early Marcil?",
         "Marcil"),
        ("the verses from eric g. samoylova's tales. is there a better example than early samoylova?",
         "samoylova"),
        ("Zoolander is a film directed by Brad L Key and starring Key", "Key"),
    ],
)
def test_cue_shaped_names(engine, text, name):
    assert name in _values(engine, text, "PERSON")


@pytest.mark.parametrize(
    "text",
    [
        "She lives in Paris. The family lived in Rome. Scientists studied it.",
        "We sell Apples, Pears and Oranges to our partners: Google, Amazon and Meta.",
        "call me tomorrow about the name is required bug",
        "I am happy. This is fine. Hello there, dear friend",
    ],
)
def test_cues_do_not_take_ordinary_words(engine, text):
    assert not _values(engine, text, "PERSON")


# --- person records ----------------------------------------------------------------------------------------


def test_lower_case_person_record(engine):
    found = _found(engine, "john smith, 12 oak st, 1984-03-02")
    assert ("PERSON", "john smith") in found
    assert ("STREET_ADDRESS", "12 oak st") in found
    assert ("DATE_OF_BIRTH", "1984-03-02") in found


def test_records_under_a_header_are_typed_by_their_columns(engine):
    text = "id,name,address,dob\n1,maria garcia,4 elm road,1990-07-12\n2,li wei,77 pine ave,12/01/1975"
    found = _found(engine, text)
    assert {("PERSON", "maria garcia"), ("PERSON", "li wei"), ("DATE_OF_BIRTH", "1990-07-12"),
            ("DATE_OF_BIRTH", "12/01/1975")} <= found
    assert any(t == "STREET_ADDRESS" and "77 pine ave" in v for t, v in found)


def test_all_caps_record_with_a_phone_field(engine):
    found = _found(engine, "JOHN SMITH | 12 OAK ST | 03/02/1984 | 555-123-4567")
    assert {("PERSON", "JOHN SMITH"), ("DATE_OF_BIRTH", "03/02/1984"), ("PHONE_NUMBER", "555-123-4567")} <= found


def test_birth_dates_after_a_birth_cue(engine):
    found = _found(engine, "She was born on 8/5/1989 in a small town. DOB: 1975-02-11.")
    assert {("DATE_OF_BIRTH", "8/5/1989"), ("DATE_OF_BIRTH", "1975-02-11")} <= found


@pytest.mark.parametrize(
    "text",
    ["Ford, Chevrolet, Mercedes and Lexus are car brands.", "I have 3 apples, 2 oranges, 1 banana",
     "Robert Lewandowski, 2022-2021, 35 goals", "The meeting is on 2024-05-01, in room 4"],
)
def test_lists_that_are_not_person_records(engine, text):
    found = _found(engine, text)
    assert not any(t in ("DATE_OF_BIRTH", "PHONE_NUMBER", "STREET_ADDRESS") for t, _ in found), found


# --- names in all capitals ---------------------------------------------------------------------------------


def test_full_names_on_an_all_caps_line(engine):
    assert "JOHN SMITH" in _values(engine, "PATIENT: JOHN SMITH\nDOB: 1984-03-02", "PERSON")
    assert "JOHN SMITH" in _values(engine, "MARIA GARCIA AND JOHN SMITH ATTENDED THE MEETING", "PERSON")
    assert not _values(engine, "THE NEW YORK GIANTS WON. PLEASE CALL MAY. TABLE OF CONTENTS", "PERSON")


# --- bad input: look-alike characters, CRLF, very long lines -----------------------------------------------


@pytest.mark.parametrize(
    "text, entity_type, value",
    [
        ("Please call me at ０４９４ ９２ ８２ ３２ tomorrow", "PHONE_NUMBER", "０４９４ ９２ ８２ ３２"),
        ("Call me on ٠٤٩٤ ٩٢ ٨٢ ٣٢ please", "PHONE_NUMBER", "٠٤٩٤ ٩٢ ٨٢ ٣٢"),
        ("My card ４１１１ １１１１ １１１１ １１１１ was declined", "CREDIT_CARD", "４１１１ １１１１ １１１１ １１１１"),
        ("email jane\u200b.doe@exam\u200bple.com now", "EMAIL_ADDRESS", "jane\u200b.doe@exam\u200bple.com"),
        ("write to jane\u00addoe\uff20example.com", "EMAIL_ADDRESS", "jane\u00addoe\uff20example.com"),
    ],
)
def test_look_alike_characters_are_found_on_the_original_offsets(engine, text, entity_type, value):
    assert (entity_type, value) in _found(engine, text)


def test_crlf_lines(engine):
    text = "Name: Kalman Ferenc\r\nPhone: 0494 92 82 32\r\nLeverett: hi\r\nDanielle: bye\r\n"
    found = _found(engine, text)
    assert {("PERSON", "Kalman Ferenc"), ("PHONE_NUMBER", "0494 92 82 32"), ("PERSON", "Leverett")} <= found
    assert not any("\r" in v or "\n" in v for _, v in found)


def test_scrub_removes_the_original_characters(engine):
    from app.pii.scrub import ScrubInput, scrub_examples

    text = "email jane\u200b.doe@exam\u200bple.com now\r\nName: Kalman Ferenc\r\nCall ０４９４ ９２ ８２ ３２"
    [res] = scrub_examples(engine, [ScrubInput({"text": text}, "k")], PiiPolicy(), hash_key=b"k" * 32)
    assert res.content["text"] == "email <EMAIL_ADDRESS> now\r\nName: <PERSON>\r\nCall <PHONE_NUMBER>"


@pytest.mark.parametrize("cut", range(180, 200, 3))
def test_values_cut_by_a_window_on_a_very_long_line(engine, cut):
    from app.pii.scrub import ScrubInput, scrub_examples

    line = (("word " * 200)[:cut] + " call me at 0494 92 82 32 or mail jane.doe@example.com, Mrs. Barbara Yudina"
            " said " + "word " * 100)
    [res] = scrub_examples(engine, [ScrubInput({"text": line}, "k")], PiiPolicy(max_chars=200),
                           hash_key=b"k" * 32)
    out = res.content["text"]
    assert "92 82" not in out and "jane" not in out and "Yudina" not in out


def test_normalised_offsets_map_back():
    from app.pii.recognizers.normalize import Normalised

    text = "a\u200bb\r\nc\uff10d"
    norm = Normalised(text)
    assert norm.text == "ab\nc0d"
    assert norm.to_original(0, 2) == (0, 3)  # "a\u200bb": the zero-width character inside goes with it
    assert norm.to_original(2, 3) == (3, 5)  # "\n" is the original "\r\n"
    assert text[slice(*norm.to_original(4, 5))] == "\uff10"
    assert Normalised("plain ascii").to_original(1, 3) == (1, 3)


# --- vocatives, greetings, address labels ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name",
    [("Warrane, can I please speak to your boss?", "Warrane"), ("Hi Siiri, thanks for the update.", "Siiri"),
     ("Maria Pesonen\nSaanatunturintie 6\nLuoto 18979", "Maria Pesonen")],
)
def test_addressed_and_labelled_names(engine, text, name):
    assert name in _values(engine, text, "PERSON")


@pytest.mark.parametrize(
    "text",
    ["Ideally, you would want to spend a day there.", "Sorry, can you help? Yes, I can.",
     "Good morning Team. Dear Sir, please reply. Well, could you?", "Table of Contents\n1 Introduction\n2 Methods"],
)
def test_vocative_cues_leave_ordinary_words(engine, text):
    assert not _values(engine, text, "PERSON")


def test_street_patterns_stay_on_their_line(engine):
    found = _found(engine, "Maria Pesonen\nSaanatunturintie 6\nLuoto 18979")
    assert ("STREET_ADDRESS", "Saanatunturintie 6") in found


def test_birth_date_beats_the_models_date_label(engine):
    found = _found(engine, "john smith, 12 oak st, 1984-03-02", entities=["PERSON", "DATE_TIME", "DATE_OF_BIRTH"])
    assert ("DATE_OF_BIRTH", "1984-03-02") in found
