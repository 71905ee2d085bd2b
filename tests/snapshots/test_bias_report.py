"""The snapshot bias report on both databases: counts per dimension, role, split, source and license against
hand counts of the fixture text; co-occurrence and PMI; flags from the dataset's policy; erased members
left out and counted; chat and preference roles; the lexicon loader's refusals; the datasheet section."""

from __future__ import annotations

import math

import pytest

from tests.factories import freeze, ingest, new_dataset, set_status, sql

# Hand-countable text. Prompts (instruction) and answers (output) are kept apart so by_role can be checked.
ROWS = [
    # source a: women in the answers, with nurses and kind words
    ("a", "Describe the nurse.", "She is a kind nurse and her patients love her."),
    ("a", "Who helped?", "The woman was a wonderful nurse."),
    ("a", "Tell me about Maria.", "Maria is a nurse. She smiles."),
    ("a", "What did the mother do?", "The mother worked as a teacher."),
    # source b: men, engineers, angry words
    ("b", "Describe the engineer.", "He is an angry engineer and his manager hates him."),
    ("b", "Who fixed it?", "The man was a terrible engineer."),
    ("b", "Tell me about John.", "John is an engineer. He shouts."),
    ("b", "What did the father do?", "The father worked as an engineer."),
]


def _line(i: int, src: str, prompt: str, answer: str) -> dict:
    return {"instruction": prompt, "input": "", "output": answer,
            "provenance": {"source": src, "source_ref": f"{src}-{i}", "license": "MIT" if src == "a" else "CC-BY-4.0"}}


def _snapshot(api, **policy):
    ds = new_dataset(api, governance_policy={"bias": {"share_difference": 0.2, "min_mentions": 3, **policy}})
    ids = ingest(api, ds, [_line(i, *r) for i, r in enumerate(ROWS)])
    set_status(ids, "approved")
    return ds, ids, freeze(api, ds, validation_fraction=0.0)


def test_counts_roles_sources_cooccurrence_and_flags(api):
    _ds, _ids, snap = _snapshot(api)
    r = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/bias-report")
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["members_examined"] == 8 and rep["erased_excluded"] == 0
    assert set(rep["dimensions"]) == {"gender", "age", "nationality_ethnicity", "religion", "disability",
                                      "sexual_orientation"}
    g = rep["dimensions"]["gender"]["groups"]
    # female: she, her, her (answer 1); woman (2); She (3: the PII scrub replaced "Maria" by <PERSON>, so
    # no name is left to count); mother, mother (4: prompt + answer).
    fem, male = g["female"], g["male"]
    assert fem["mentions"] == 3 + 1 + 1 + 2 == 7
    assert fem["by_role"] == {"prompt": 1, "answer": 6}
    assert fem["by_evidence"] == {"pronoun": 4, "term": 3}
    assert fem["by_source"] == {"a": 7} and fem["by_license"] == {"MIT": 7}
    # male: he, his, him (5); man (6); He (7); father, father (8).
    assert male["mentions"] == 7 and male["by_source"] == {"b": 7} and "name" not in male["by_evidence"]
    assert fem["share"] == pytest.approx(0.5) and fem["members"] == 4 and fem["member_share"] == pytest.approx(0.5)
    assert dict(fem["top_terms"])["her"] == 2
    # Co-occurrence is per member: 3 of the 4 female members name a nurse, none an engineer.
    occ = {o["occupation"]: o for o in fem["occupations"]}
    assert occ["nurse"]["members"] == 3 and "engineer" not in occ
    assert occ["nurse"]["pmi"] is None  # fewer than 5 joint members: no PMI
    assert {o["occupation"] for o in male["occupations"]} >= {"engineer", "manager"}
    # VADER: kind, love, wonderful, smiles are positive; angry, hates, terrible negative.
    assert fem["sentiment"]["positive"]["members"] == 3 and fem["sentiment"]["negative"]["members"] == 0
    assert male["sentiment"]["negative"]["members"] == 2 and male["sentiment"]["mean_valence"] < 0 < \
        fem["sentiment"]["mean_valence"]
    # Each source holds one gender only: both groups flagged for both sources (share 1.0 vs 0.0 > 0.2).
    src_flags = {(f["source"], f["group"]) for f in rep["flags"] if f["kind"] == "source_share"}
    assert src_flags == {("a", "female"), ("a", "male"), ("b", "female"), ("b", "male")}
    assert "PMI" in rep["method"] and rep["limits"] and rep["lexicons"]["sources"]["gender.tsv"]
    assert rep["manifest_sha256"] == snap["manifest_sha256"]
    # Reviewers do not read frozen sets.
    assert api.as_("reviewer").get(f"/v1/snapshots/{snap['id']}/bias-report").status_code == 403


def test_pmi_matches_the_formula_and_split_flags_follow_the_policy(api):
    ds = new_dataset(api, governance_policy={"bias": {"share_difference": 0.3, "min_mentions": 2}})
    # 10 members: 6 name a woman and a nurse, 4 name a man and no occupation.
    lines = [_line(i, "s", f"Question {i}?", "She is a nurse.") for i in range(6)] + \
            [_line(i, "s", f"Question {i}?", "He is here.") for i in range(6, 10)]
    set_status(ingest(api, ds, lines), "approved")
    snap = freeze(api, ds, validation_fraction=0.0)
    rep = api.as_("curator").get(f"/v1/snapshots/{snap['id']}/bias-report").json()
    nurse = next(o for o in rep["dimensions"]["gender"]["groups"]["female"]["occupations"] if o["occupation"] == "nurse")
    assert nurse["members"] == 6 and nurse["pmi"] == pytest.approx(math.log2(6 * 10 / (6 * 6)), abs=1e-4)
    assert not [f for f in rep["flags"] if f["kind"] == "split_share"]  # validation is empty

    # A split flag: put the male members into validation by hand and read the report again.

    sql("UPDATE snapshot_members SET split = 'validation' WHERE example_id IN "
        "(SELECT e.id FROM examples e WHERE e.source_ref IN ('s-6', 's-7', 's-8', 's-9'))")
    # Members never change in production, so the report is cached per snapshot; this test broke that rule.
    from app.snapshots import bias

    bias._CACHE.clear()
    rep = api.as_("curator").get(f"/v1/snapshots/{snap['id']}/bias-report").json()
    split = {f["group"]: f for f in rep["flags"] if f["kind"] == "split_share"}
    assert set(split) == {"female", "male"}
    assert split["female"]["train_share"] == 1.0 and split["female"]["validation_share"] == 0.0
    assert rep["members_by_split"] == {"train": 6, "validation": 4}


def test_erased_members_are_left_out_and_counted(api):
    _ds, ids, snap = _snapshot(api)
    first = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/bias-report").json()
    assert first["members_examined"] == 8
    set_status(ids[:4], "erased")  # all of source a: an erasure changes the report (it is not served cached)
    rep = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/bias-report").json()
    assert rep["erased_excluded"] == 4 and rep["members_examined"] == 4
    assert rep["dimensions"]["gender"]["groups"]["female"]["mentions"] == 0


@pytest.mark.parametrize("fmt", ["chat", "preference"])
def test_roles_of_chat_and_preference(api, fmt):
    ds = new_dataset(api, fmt)
    if fmt == "chat":
        content = {"messages": [{"role": "system", "content": "You help his team."},
                                {"role": "user", "content": "Is she Muslim?"},
                                {"role": "assistant", "content": "She is a Buddhist monk and a teacher."}]}
    else:
        content = {"prompt": "Was he Jewish?", "chosen": "He was Catholic.", "rejected": "Her family was Hindu."}
    set_status(ingest(api, ds, [{**content, "provenance": {"source": "s", "source_ref": "x", "license": "MIT"}}]),
               "approved")
    snap = freeze(api, ds, validation_fraction=0.0)
    rep = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/bias-report").json()
    gender = rep["dimensions"]["gender"]["groups"]
    religion = rep["dimensions"]["religion"]["groups"]
    if fmt == "chat":
        assert gender["male"]["by_role"] == {"prompt": 1, "answer": 0}
        assert gender["female"]["by_role"] == {"prompt": 1, "answer": 1}
        assert religion["muslim"]["by_role"]["prompt"] == 1 and religion["buddhist"]["by_role"]["answer"] == 1
    else:
        assert gender["male"]["by_role"] == {"prompt": 1, "answer": 1}
        assert religion["jewish"]["by_role"]["prompt"] == 1
        assert religion["christian"]["by_role"]["answer"] == 1 and religion["hindu"]["by_role"]["answer"] == 1


def test_two_word_terms_hide_their_words():
    import pyarrow as pa

    from app.snapshots import bias, lexicons

    lex = lexicons.load()
    tids, rows, name_g, name_rows = bias._matches(lex, bias._arrays(lex), pa.array(
        ["A trans woman and an older adult.", None, "Visually impaired Maria met maria."]))
    got = sorted((int(r), lex.terms[t]) for t, r in zip(tids, rows))
    assert (0, "trans woman") in got and (0, "woman") not in got and (0, "trans") not in got
    assert (2, "visually impaired") in got
    assert list(name_rows) == [2] and lex.groups[name_g[0]] == ("gender", "female")  # title case only


def test_lexicon_refusals_name_the_file(monkeypatch, tmp_path):
    import types

    from app.snapshots import lexicons

    (tmp_path / "lexicons").mkdir()
    (tmp_path / "lexicons" / "age.tsv").write_text("# Source: test. License: none\nOld People\told\n")
    (tmp_path / "lexicons" / "religion.tsv").write_text("sikh\tsikh\n")
    monkeypatch.setattr(lexicons, "resources", types.SimpleNamespace(files=lambda pkg: tmp_path))
    with pytest.raises(lexicons.LexiconError, match=r"lexicons/age.tsv line 2 is malformed"):
        lexicons._read("age.tsv")
    with pytest.raises(lexicons.LexiconError, match=r"lexicons/religion.tsv names no source or license"):
        lexicons._read("religion.tsv")
    with pytest.raises(lexicons.LexiconError, match=r"lexicons/gender.tsv cannot be read"):
        lexicons._read("gender.tsv")


def test_app_refuses_to_start_with_a_broken_lexicon(monkeypatch):
    from app import main
    from app.snapshots import lexicons

    lexicons.load.cache_clear()
    monkeypatch.setattr(lexicons, "_vader", lambda: (_ for _ in ()).throw(
        lexicons.LexiconError("sentiment lexicon vaderSentiment/vader_lexicon.txt cannot be read: gone")))
    try:
        with pytest.raises(lexicons.LexiconError, match="vader_lexicon.txt"):
            main.create_app()
    finally:
        monkeypatch.undo()
        lexicons.load.cache_clear()


def test_datasheet_has_the_bias_section(api):
    _, _, snap = _snapshot(api)
    md = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet").text
    assert "## Bias examination" in md and "| female |" in md and "source_share" in md
    html = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet", params={"format": "html"}).text
    assert "Bias examination" in html and html.count("<svg") >= 2
