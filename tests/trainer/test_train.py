"""train() end to end on the tiny model: adapter, model card, accounting, errors, determinism."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import make_records

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.train

HP = {"epochs": 2, "batch_tokens": 1024, "max_seq_len": 256, "learning_rate": 5e-3, "log_every": 1, "seed": 7}


def _spec(tiny_model, **over):
    return {
        "base_model": str(tiny_model),
        "method": "lora",
        "hyperparameters": dict(HP),
        "model_card": {
            "snapshot": "snap-1",
            "counts_by_source": {"crm": 30, "wiki": 10},
            "reviewers": ["ana", "bo"],
        },
    } | over


def test_train_end_to_end(tiny_model, tmp_path, records):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.data import manifest_sha256
    from trainer.run import train

    events = []
    manifest = manifest_sha256((r["content_sha256"], r["split"]) for r in records)
    result = train(_spec(tiny_model, expected_manifest_sha256=manifest), records, tmp_path, events.append)
    m = result["metrics"]
    assert m["manifest_sha256"] == manifest
    assert m["val_loss_after"] < m["val_loss_before"]
    assert m["tokens_per_s"] > 0 and m["steps"] >= 2 and 0 < m["packing_efficiency"] <= 1

    # Exact per-example accounting: every train revision, its own token count, once per epoch.
    train_ids = [r["revision_id"] for r in records if r["split"] == "train"]
    assert sorted(e["revision_id"] for e in result["examples"]) == sorted(train_ids)
    assert all(e["epochs"] == 2 for e in result["examples"])
    assert sum(e["tokens"] for e in result["examples"]) == m["tokens"]

    kinds = {e["kind"] for e in events}
    assert {"log", "metrics"} <= kinds
    assert all(set(e) == {"kind", "level", "message", "step", "data"} for e in events)
    steps = [e for e in events if e["kind"] == "metrics" and "train_loss" in e["data"]]
    assert steps and all({"train_loss", "tokens_per_s"} <= set(e["data"]) for e in steps)

    adapter = Path(result["adapter_dir"])
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    card = (adapter / "README.md").read_text()
    assert manifest in card and "counts_by_source" in card and "val_loss_after" in card and "lora_r" in card

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tuned = PeftModel.from_pretrained(base, adapter)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
        adapted = tuned(input_ids=ids).logits
    assert not torch.allclose(plain, adapted), "the saved adapter changes the model"


def test_same_seed_same_adapter(tiny_model, tmp_path, records):
    from safetensors.torch import load_file

    from trainer.run import train

    a = train(_spec(tiny_model), records, tmp_path / "a")
    b = train(_spec(tiny_model), records, tmp_path / "b")
    wa = load_file(Path(a["adapter_dir"]) / "adapter_model.safetensors")
    wb = load_file(Path(b["adapter_dir"]) / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["metrics"]["val_loss_after"] == b["metrics"]["val_loss_after"]


def test_a_hub_id_that_names_a_local_folder_is_refused(tiny_model, tmp_path, monkeypatch):
    """The API takes 'org/name' as a hub id without a file-system check; from_pretrained would load a
    folder ./org/name of the trainer's working directory instead, outside the model roots."""
    from trainer.errors import TrainError
    from trainer.model import load_base

    (tmp_path / "org").mkdir()
    shutil.copytree(tiny_model, tmp_path / "org" / "name")  # a real model: it would load
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainError) as err:
        load_base("org/name", "lora", torch.device("cpu"), torch.float32)
    assert err.value.code == "bad_base_model"


@pytest.mark.parametrize(
    ("spec_over", "code"),
    [
        ({"base_model": "/does/not/exist"}, "bad_base_model"),
        ({"method": "qlora"}, "qlora_unavailable"),
        ({"hyperparameters": {"lora_r": 0}}, "invalid_hyperparameters"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "invalid_hyperparameters"),
        ({"hyperparameters": {"lora_rank": 8}}, "invalid_hyperparameters"),
        ({"expected_manifest_sha256": "f" * 64}, "manifest_mismatch"),
        ({"hyperparameters": {"attention": "pedigree_varlen"}}, "invalid_hyperparameters"),
    ],
)
def test_failures_carry_their_code(tiny_model, tmp_path, records, spec_over, code):
    from trainer.errors import TrainError
    from trainer.run import train

    if torch.cuda.is_available() and (code == "qlora_unavailable" or "attention" in str(spec_over)):
        pytest.skip("available on a CUDA host")
    with pytest.raises(TrainError) as err:
        train(_spec(tiny_model, **spec_over), records, tmp_path)
    assert err.value.code == code
    if code == "invalid_hyperparameters":
        assert "hyperparameters." in err.value.message


def test_cancel_stops_between_steps(tiny_model, tmp_path, records):
    from trainer.errors import TrainError
    from trainer.run import train

    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(TrainError) as err:
        train(_spec(tiny_model), records, tmp_path, should_stop=should_stop)
    assert err.value.code == "cancelled"
    assert not (tmp_path / "adapter").exists()


def test_cli_make_tiny_and_train(tmp_path):
    model = tmp_path / "m"
    subprocess.run(
        [sys.executable, "-m", "trainer", "make-tiny", str(model)], check=True, capture_output=True
    )
    recs = make_records(16)
    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"base_model": str(model), "method": "lora", "hyperparameters": {"max_seq_len": 256}})
    )
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--spec",
        str(spec),
        "--data",
        str(data),
        "--out",
        str(out),
        "--events",
        str(events),
        "--quiet",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    result = json.loads((out / "result.json").read_text())
    assert result["examples"] and (Path(result["adapter_dir"]) / "adapter_model.safetensors").exists()
    assert any(json.loads(line)["kind"] == "metrics" for line in events.read_text().splitlines())

    spec.write_text(json.dumps({"base_model": str(tmp_path / "nope"), "method": "lora"}))
    proc = subprocess.run(cmd, capture_output=True, check=False)
    assert proc.returncode != 0
    assert json.loads((out / "result.json").read_text())["error"]["code"] == "bad_base_model"


def test_two_process_data_parallel_matches_one_process(tiny_model, tmp_path):
    """torchrun with two CPU ranks (gloo) trains the same adapter as one process: the global
    supervised-token normalisation makes the split invisible to the optimizer."""
    recs = make_records(40)
    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "base_model": str(tiny_model),
                "method": "lora",
                "hyperparameters": {"max_seq_len": 256, "batch_tokens": 1024, "epochs": 2},
            }
        )
    )
    results = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
        ]
        cmd = launcher + [
            "-m",
            "trainer",
            "train",
            "--spec",
            str(spec),
            "--data",
            str(data),
            "--out",
            str(out),
            "--quiet",
        ]
        env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
        results[world] = json.loads((out / "result.json").read_text())
    one, two = results[1], results[2]
    assert two["metrics"]["world_size"] == 2
    assert one["examples"] == two["examples"]
    assert two["metrics"]["val_loss_after"] == pytest.approx(one["metrics"]["val_loss_after"], rel=1e-5)


def test_gradient_checkpointing_changes_memory_not_results(tiny_model, tmp_path, records):
    from trainer.run import train

    plain = train(_spec(tiny_model), records, tmp_path / "a")
    spec = _spec(tiny_model)
    spec["hyperparameters"]["gradient_checkpointing"] = True
    ckpt = train(spec, records, tmp_path / "b")
    assert ckpt["metrics"]["val_loss_after"] == pytest.approx(plain["metrics"]["val_loss_after"], rel=1e-6)
