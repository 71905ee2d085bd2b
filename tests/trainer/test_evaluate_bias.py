"""The `bias` suite (CrowS-Pairs) on the CPU tiny model: an adapter trained on the stereotyping sentences of
one bias type must score higher than its base on that type (the delta the gate reads), an untrained run
has delta 0, and the score is the share of pairs where sent_more is more likely by mean token log-prob."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.factories import corpora_file

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train

TRAIN_TYPE, N_TRAIN, N_OTHER = "gender", 48, 24


def test_score_counts_preferences_per_type_and_direction():
    from trainer.evaluate.bias import score

    more = np.array([-1.0, -2.0, -1.0, -3.0])
    less = np.array([-2.0, -1.0, -1.0, -4.0])
    r = score(more, less, ["age", "age", "gender", "gender"], ["stereo", "antistereo", "stereo", "stereo"])
    # Pair 0 and 3 prefer sent_more; pair 2 is a tie (not a preference); pair 1 prefers sent_less.
    assert r["stereotype_score"] == 0.5 and r["ties"] == 1 and r["pairs"] == 4
    assert r["by_type"]["age"]["stereotype_score"] == 0.5 and r["by_type"]["gender"]["stereotype_score"] == 0.5
    assert r["stereo_score"] == pytest.approx(2 / 3) and r["antistereo_score"] == 0.0
    assert r["stderr"] == pytest.approx((0.25 / 4) ** 0.5)


@pytest.fixture(scope="module")
def crows(tmp_path_factory):
    path = corpora_file("bias/crows_pairs_anonymized.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1508 and len({r["bias_type"] for r in rows}) == 9
    chosen = [r for r in rows if r["bias_type"] == TRAIN_TYPE][:N_TRAIN] + \
        [r for r in rows if r["bias_type"] == "age"][:N_OTHER]
    root = tmp_path_factory.mktemp("bias")
    pairs = root / "bias_pairs.jsonl"
    pairs.write_text("".join(json.dumps({"pair_id": r[""], **{k: r[k] for k in
                                         ("sent_more", "sent_less", "stereo_antistereo", "bias_type")}}) + "\n"
                             for r in chosen))
    return {"root": root, "pairs": pairs, "rows": chosen}


@pytest.fixture(scope="module")
def trained(crows):
    from trainer.data import content_sha256
    from trainer.run import train
    from trainer.tiny import make_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = make_tiny(crows["root"] / "tiny", hidden_size=64, layers=2, heads=4, head_scale=8.0)
    # Fine-tuning data that states the stereotype of one type: what a careless dataset would teach.
    records = []
    for i, r in enumerate(x for x in crows["rows"] if x["bias_type"] == TRAIN_TYPE):
        content = {"prompt": "", "completion": r["sent_more"]}
        records.append({"revision_id": f"r{i}", "example_id": f"e{i}", "split": "train", "format": "completion",
                        "content": content, "content_sha256": content_sha256(content)})
    spec = {"base_model": str(base), "method": "lora",
            "hyperparameters": {"epochs": 30, "batch_tokens": 1024, "max_seq_len": 128, "learning_rate": 1e-2,
                                "lora_r": 16, "warmup_ratio": 0.0, "lr_scheduler": "constant", "log_every": 100}}
    result = train(spec, records, crows["root"] / "run")
    yield {"base": str(base), "adapter_dir": result["adapter_dir"]}
    torch.set_num_threads(threads)


def _run(trained, crows, adapter: bool, **params):
    from trainer.evaluate import evaluate

    spec = {"evaluation_id": "ev-bias", "suites": ["bias"], "base_model": trained["base"],
            "adapter_dir": trained["adapter_dir"] if adapter else None, "params": {"bias": params},
            "files": {"bias_pairs": str(crows["pairs"])}}
    return evaluate(spec)["results"]["bias"]


def test_adapter_trained_on_stereotypes_scores_higher_than_its_base(trained, crows):
    res = _run(trained, crows, adapter=True)
    assert res["pairs"] == N_TRAIN + N_OTHER and res["has_adapter"] is True
    g = res["by_type"][TRAIN_TYPE]
    assert g["pairs"] == N_TRAIN
    # It learnt the sent_more sentences of its training type: most now win (0.90 vs a base of 0.52 when written).
    assert g["stereotype_score"] >= 0.8 and g["delta"] >= 0.25
    assert g["delta"] == pytest.approx(g["stereotype_score"] - g["base_stereotype_score"])
    assert res["stereotype_score_delta"] == pytest.approx(res["stereotype_score"] - res["base_stereotype_score"])
    assert res["stereotype_score_delta"] > 0
    assert set(res["by_type"]) == {TRAIN_TYPE, "age"}
    assert "Blodgett" in res["noise_note"] and "length-normalised" in res["scoring"]
    json.dumps(res)  # the result travels as JSON

    base_only = _run(trained, crows, adapter=False)
    assert base_only["has_adapter"] is False and base_only["stereotype_score_delta"] == 0.0
    assert base_only["stereotype_score"] == pytest.approx(res["base_stereotype_score"])

    few = _run(trained, crows, adapter=False, max_pairs=10, seed=1)
    assert few["pairs"] == 10


def test_bad_pairs_file_names_the_line(trained, tmp_path):
    from trainer.errors import TrainError
    from trainer.evaluate import evaluate

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"sent_more": "a", "sent_less": "b", "stereo_antistereo": "both",
                               "bias_type": "age"}) + "\n")
    spec = {"evaluation_id": "x", "suites": ["bias"], "base_model": trained["base"], "files": {"bias_pairs": str(bad)}}
    with pytest.raises(TrainError, match="bias_pairs line 1: stereo_antistereo"):
        evaluate(spec)
    with pytest.raises(TrainError, match="files.bias_pairs: required"):
        evaluate({**spec, "files": {}})
