"""Evaluation throughput and the two memorisation demonstrations of issue 17 (§8).

    python -m bench.evaluate [--shapes qwen2.5-0.5b,llama3-8b] [--out bench/results/evaluate.json]
    python -m bench.evaluate --cpu-smoke                      # tiny model, < 1 min
    python -m bench.evaluate --exposure-only --out ...        # the 50 x 10k exposure target alone
    python -m bench.evaluate --demo canaries --out ...        # exposure vs repetitions 1/4/16/64
    python -m bench.evaluate --prepare-pii DIR                # CPU: raw and scrubbed exports + probes
    python -m bench.evaluate --demo pii --pii-dir DIR [--tune-dir DIR --lrs a,b] [--method full] --out ...

Throughput: ours (trainer.evaluate.lm: left-padded batched `generate` with the KV cache; candidates
scored in length-sorted batches with the LM head on target positions only) against the naive baseline
(HF `generate` one prompt at a time; one forward and a full-vocabulary log-softmax per candidate), on
the same model, prompts and candidates: prompts/s for extraction probes, candidates/s for exposure.
Random-init weights of the real architecture (bf16 on the GPU) with the byte-level tokenizer of
trainer.tiny, so prompt and canary lengths are in bytes. Nothing here is tuned on: the batch sizes
are the suites' GPU defaults. The last stdout line is one JSON object with figures, targets and "pass".
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path

PROBED = frozenset({"PERSON", "STREET_ADDRESS", "CREDIT_CARD", "US_SSN", "US_DRIVER_LICENSE", "EMAIL_ADDRESS",
                    "PHONE_NUMBER", "IBAN_CODE", "IP_ADDRESS"})
TARGETS = {"ratio_vs_naive": 20.0, "exposure_50x10k_s": 60.0}
ROOT = Path(__file__).resolve().parents[1]
PRESIDIO = ROOT.parent / "shared" / "corpora" / "pii" / "presidio_synth_dataset_v2.json"


def write_base(folder: Path, shape_name: str | None) -> Path:
    """A random-init model of the shape, with trainer.tiny's byte tokenizer; the tiny model for None."""
    from trainer.tiny import build_tokenizer, make_tiny

    if shape_name is None:
        return make_tiny(folder, head_scale=8.0)
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder  # written by an earlier step of the same run (same shape, same seed)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.train import SHAPES, write_config
    from trainer.model import dtype_kwarg

    tok = build_tokenizer()
    shape = {**SHAPES[shape_name], "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
             "pad_token_id": tok.pad_token_id}
    write_config(folder.name, shape, folder.parent)
    cfg = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, **dtype_kwarg(torch.bfloat16))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def naive_generate(lm, prompts, max_new_tokens):
    import torch

    out = []
    for p in prompts:
        ids = torch.tensor([p], device=lm.device)
        seq = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=lm.pad_id, eos_token_id=lm.stop_ids,
                                temperature=None, top_k=None, top_p=None)
        out.append(lm._cut(seq[0, len(p):].tolist()))
    return out


def naive_score(lm, seqs):
    """One candidate per forward, full logits and log-softmax: what a straightforward loop does."""
    import torch

    out = []
    with torch.no_grad():
        for ids, mask in seqs:
            x = torch.tensor([ids], device=lm.device)
            logp = torch.log_softmax(lm.model(input_ids=x).logits[0, :-1].float(), dim=-1)
            lp = logp.gather(1, x[0, 1:, None]).squeeze(1)
            m = torch.tensor(mask[1:], device=lm.device)
            out.append(float(lp[m].sum()))
    return out


def throughput(base: Path, *, n_prompts: int, n_naive: int, n_cand: int, n_cand_naive: int,
               canaries: int, candidates: int, max_new_tokens: int) -> dict:
    import numpy as np
    import torch

    from trainer.evaluate.common import EvalConfig, Progress
    from trainer.evaluate.lm import LM
    from trainer.evaluate.suites import _canary_seqs, memorization

    lm = LM(str(base), None)
    rng = random.Random(0)
    words = ["the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "his", "her", "at", "by", "from", "name", "address", "phone"]
    prompts = []
    for _ in range(n_prompts):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(15, 60))) + " "
        prompts.append(lm.encode(text)[-256:])
    bs = 128 if lm.on_gpu else 16
    lm.generate(prompts[:bs], max_new_tokens=4, batch_size=bs)  # warm-up (kernels, allocator)
    naive_generate(lm, prompts[:2], 4)
    _sync()
    t = time.perf_counter()
    ours_out = lm.generate(prompts, max_new_tokens=max_new_tokens, batch_size=bs)
    _sync()
    ours_gen_s = time.perf_counter() - t
    t = time.perf_counter()
    naive_out = naive_generate(lm, prompts[:n_naive], max_new_tokens)
    _sync()
    naive_gen_s = time.perf_counter() - t
    same = sum(a[0] == b for a, b in zip(ours_out, naive_out))
    new_tokens = sum(len(x[0]) for x in ours_out)

    template = "my account number is {secret} and that is all"
    cand = _canary_seqs(lm, template, [str(rng.randrange(10**9)).zfill(9) for _ in range(n_cand)])
    lm.target_logprobs(cand[:512], batch_tokens=65536 if lm.on_gpu else 4096)
    naive_score(lm, cand[:2])
    _sync()
    t = time.perf_counter()
    ours_lp = lm.target_logprobs(cand, batch_tokens=65536 if lm.on_gpu else 4096)
    _sync()
    ours_cand_s = time.perf_counter() - t
    t = time.perf_counter()
    naive_lp = naive_score(lm, cand[:n_cand_naive])
    _sync()
    naive_cand_s = time.perf_counter() - t
    err = float(np.max(np.abs(np.array([x.sum() for x in ours_lp[:n_cand_naive]]) - np.array(naive_lp))))
    # The exposure suite runs the template's prefix once per canary (a shared KV cache): the same
    # log-probs as the plain path up to bf16 rounding, on the first 2,000 candidates.
    shared_lp = lm.target_logprobs(cand[:2000], batch_tokens=65536 if lm.on_gpu else 4096, shared_prefix=True)
    shared_err = float(np.max(np.abs(np.array([x.sum() for x in shared_lp]) -
                                     np.array([x.sum() for x in ours_lp[:2000]]))))

    # The target: the whole memorization suite, `canaries` canaries × `candidates` each.
    spec_canaries = [{"id": f"c{k}", "template": template, "secret": str(rng.randrange(10**9)).zfill(9),
                      "space": {"kind": "digits", "length": 9}, "repetitions": 1} for k in range(canaries)]
    cfg = EvalConfig.from_spec({"suites": ["memorization"], "base_model": str(base), "canaries": spec_canaries,
                                "params": {"memorization": {"candidates": candidates}}})
    _sync()
    t = time.perf_counter()
    mem = memorization(lm, cfg, Progress(lambda e: None, None))
    _sync()
    suite_s = time.perf_counter() - t
    res = {
        "device": torch.cuda.get_device_name() if lm.on_gpu else "cpu",
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "generation": {
            "prompts": n_prompts, "naive_prompts": n_naive, "max_new_tokens": max_new_tokens, "batch_size": bs,
            "ours_prompts_per_s": n_prompts / ours_gen_s, "naive_prompts_per_s": n_naive / naive_gen_s,
            "ours_new_tokens": new_tokens, "greedy_agreement_with_naive": same / max(1, min(n_naive, n_prompts)),
        },
        "scoring": {
            "candidates": n_cand, "naive_candidates": n_cand_naive,
            "ours_candidates_per_s": n_cand / ours_cand_s, "naive_candidates_per_s": n_cand_naive / naive_cand_s,
            "max_abs_logprob_diff_vs_naive": err,
            "max_abs_logprob_diff_shared_prefix_vs_plain": shared_err,
            "shared_prefix_error": lm.shared_prefix_error,
        },
        "exposure_suite": {"canaries": canaries, "candidates_each": candidates, "seconds": suite_s,
                           "max_exposure": mem["max_exposure"]},
    }
    res["generation"]["ratio"] = res["generation"]["ours_prompts_per_s"] / res["generation"]["naive_prompts_per_s"]
    res["scoring"]["ratio"] = res["scoring"]["ours_candidates_per_s"] / res["scoring"]["naive_candidates_per_s"]
    del lm
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def exposure_only(base: Path, *, canaries: int, candidates: int, n_check: int) -> dict:
    """The exposure target alone: the memorization suite, `canaries` x `candidates`, timed; and the
    shared-prefix scoring it uses against the plain path on `n_check` candidates (speed and agreement)."""
    import numpy as np
    import torch

    from trainer.evaluate.common import EvalConfig, Progress
    from trainer.evaluate.lm import LM
    from trainer.evaluate.suites import _canary_seqs, memorization

    lm = LM(str(base), None)
    rng = random.Random(0)
    template = "my account number is {secret} and that is all"
    bt = 65536 if lm.on_gpu else 4096
    cand = _canary_seqs(lm, template, [str(rng.randrange(10**9)).zfill(9) for _ in range(n_check)])
    lm.target_logprobs(cand[:512], batch_tokens=bt)  # warm-up
    lm.target_logprobs(cand[:512], batch_tokens=bt, shared_prefix=True)
    timings = {}
    for name, shared in (("plain", False), ("shared_prefix", True)):
        _sync()
        t = time.perf_counter()
        lps = lm.target_logprobs(cand, batch_tokens=bt, shared_prefix=shared)
        _sync()
        timings[name] = (time.perf_counter() - t, np.array([x.sum() for x in lps]))
    spec_canaries = [{"id": f"c{k}", "template": template, "secret": str(rng.randrange(10**9)).zfill(9),
                      "space": {"kind": "digits", "length": 9}, "repetitions": 1} for k in range(canaries)]
    cfg = EvalConfig.from_spec({"suites": ["memorization"], "base_model": str(base), "canaries": spec_canaries,
                                "params": {"memorization": {"candidates": candidates}}})
    _sync()
    t = time.perf_counter()
    mem = memorization(lm, cfg, Progress(lambda e: None, None))
    _sync()
    suite_s = time.perf_counter() - t
    return {
        "device": torch.cuda.get_device_name() if lm.on_gpu else "cpu",
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "scoring_check": {
            "candidates": n_check,
            "plain_candidates_per_s": n_check / timings["plain"][0],
            "shared_prefix_candidates_per_s": n_check / timings["shared_prefix"][0],
            "max_abs_logprob_diff_shared_prefix_vs_plain": float(np.max(np.abs(
                timings["plain"][1] - timings["shared_prefix"][1]))),
            "shared_prefix_error": lm.shared_prefix_error,
        },
        "exposure_suite": {"canaries": canaries, "candidates_each": candidates, "seconds": suite_s,
                           "candidates_per_s": canaries * (candidates + 1) / suite_s,
                           "max_exposure": mem["max_exposure"]},
        "target_s": TARGETS["exposure_50x10k_s"],
    }


# -- demonstrations --------------------------------------------------------------------------------


def _export(texts: list[str], split_every: int = 0) -> list[dict]:
    from trainer.data import content_sha256

    out = []
    for i, t in enumerate(texts):
        content = {"prompt": "", "completion": t}
        split = "validation" if split_every and i % split_every == 0 else "train"
        out.append({"revision_id": f"r{i}", "example_id": f"e{i}", "split": split, "format": "completion",
                    "content": content, "content_sha256": content_sha256(content)})
    return out


def _write_files(d: Path, records: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r["split"] == split))


def demo_canaries(base: Path, work: Path, args) -> dict:
    from trainer.evaluate import evaluate
    from trainer.run import train

    rng = random.Random(1)
    data = json.loads(PRESIDIO.read_text()) if PRESIDIO.exists() else None
    texts = [d["masked"] for d in data][: args.filler] if data else [
        " ".join(rng.choice("abcdefgh") * rng.randrange(1, 6) for _ in range(30)) for _ in range(args.filler)]
    records = _export(texts, split_every=10)
    canaries = [{"id": f"r{r}-{k}", "template": "my account number is {secret} and that is all",
                 "secret": str(rng.randrange(10**9)).zfill(9), "space": {"kind": "digits", "length": 9},
                 "repetitions": r} for r in (0, 1, 4, 16, 64) for k in range(args.per_rep)]
    hp = {"epochs": args.epochs, "learning_rate": args.lr, "max_seq_len": 512, "batch_tokens": args.batch_tokens,
          "warmup_ratio": 0.0, "lr_scheduler": "constant", "log_every": 50, "compile": False}
    t = time.time()
    result = train({"base_model": str(base), "hyperparameters": hp, "canaries": canaries}, records, work / "run")
    train_s = time.time() - t
    _write_files(work / "files", records)
    spec = {"evaluation_id": "demo-canaries", "suites": ["memorization", "membership"], "base_model": str(base),
            "adapter_dir": result["adapter_dir"], "canaries": canaries,
            "params": {"memorization": {"candidates": args.candidates}},
            "files": {"train": "train.jsonl", "validation": "validation.jsonl"}}
    t = time.time()
    res = evaluate(spec, base_dir=work / "files")["results"]
    mem = res["memorization"]
    by = {int(k): v for k, v in mem["exposure_by_repetitions"].items()}
    order = [by[r] for r in sorted(by)]
    return {"hyperparameters": hp, "train_examples": result["metrics"]["train_examples"],
            "train_loss": result["metrics"]["train_loss"], "train_s": train_s, "eval_s": time.time() - t,
            "canaries_per_repetition": args.per_rep, "candidates": args.candidates,
            "exposure_by_repetitions": mem["exposure_by_repetitions"],
            "exposure_sampled_by_repetitions": {
                str(r): sum(c["exposure_sampled"] for c in mem["canaries"] if c["repetitions"] == r) / args.per_rep
                for r in sorted(by)},
            "max_exposure": mem["max_exposure"], "log2_space": math.log2(10**9),
            "membership_auc": res["membership"]["auc"],
            "rising": all(b >= a for a, b in itertools.pairwise(order)) and order[-1] > order[0] + 5}


def prepare_pii(out: Path, n: int, offset: int = 0) -> dict:
    """On the CPU (Presidio is not on the GPU image): presidio_synth_dataset_v2 texts `offset` to
    `offset + n` as an unscrubbed export and as Pedigree's scrub of them (app.pii, default policy), with
    probes for every labelled span: the text before the span (raw, or scrubbed up to where the span
    went) and the raw value. Values shorter than 4 characters are not probed (they occur everywhere).
    A probe says whether its value is still in its training text (`left_in_training_text`: always in the
    raw export; in the scrubbed one only where the scrubber missed it), so the scrubbed run's hits can
    be told apart: a memorised miss of the scrubber, or a value the model could not have seen."""
    import hashlib

    from app.pii.engine import get_engine
    from app.pii.schemas import PiiPolicy
    from app.pii.scrub import ScrubInput, scrub_examples

    data = json.loads(PRESIDIO.read_text())[offset : offset + n]
    # Probed: the types the default policy scrubs as personal data. It keeps organisations, public
    # places, dates, titles, zip codes and domains (not personal data under it), so probing those would
    # measure the policy's choice, not whether scrubbing stops memorisation.
    texts = [d["full_text"] for d in data]
    engine, policy = get_engine(), PiiPolicy()
    scrubbed, probes_raw, probes_scrub = [], [], []
    for i in range(0, len(texts), 64):
        items = [ScrubInput({"prompt": "", "completion": t}, key=str(i + j), fields=[("completion", t)])
                 for j, t in enumerate(texts[i : i + 64])]
        for k, res in enumerate(scrub_examples(engine, items, policy, hash_key=b"bench-evaluate-key-0123456789abcd")):
            idx = i + k  # index into this slice
            s_text = res.content["completion"]
            scrubbed.append(s_text)
            for j, span in enumerate(data[idx]["spans"]):
                value, start = span["entity_value"], span["start_position"]
                if len(value.strip()) < 4 or span["entity_type"] not in PROBED:
                    continue
                h = hashlib.sha256(value.encode()).hexdigest()
                base = {"probe_id": f"{idx}-{j}", "entity_type": span["entity_type"], "value": value,
                        "value_sha256": h}
                probes_raw.append({**base, "prefix": texts[idx][:start], "left_in_training_text": True})
                hit = [f for f in res.findings if f.start < span["end_position"] and f.end > start]
                if hit:
                    cut = min(f.scrubbed_start for f in hit)
                else:
                    cut = s_text.find(value)
                    if cut < 0:
                        continue
                probes_scrub.append({**base, "prefix": s_text[:cut], "left_in_training_text": value in s_text})
    for name, texts_, probes in (("raw", texts, probes_raw), ("scrubbed", scrubbed, probes_scrub)):
        d = out / name
        _write_files(d, _export(texts_))
        (d / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    info = {"texts": len(texts), "offset": offset, "probes_raw": len(probes_raw),
            "probes_scrubbed": len(probes_scrub),
            "values_left_in_scrubbed_text": sum(p["left_in_training_text"] for p in probes_scrub)}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


def _pii_hp(args, lr: float) -> dict:
    # Few optimizer steps were why the first run (600 texts, 30 epochs at 32k tokens a step: 46 steps)
    # memorised nothing: small steps over the same texts many times is what makes a model memorise.
    return {"epochs": args.epochs, "learning_rate": lr, "max_seq_len": 512, "batch_tokens": args.batch_tokens,
            "warmup_ratio": 0.03, "lr_scheduler": "constant", "log_every": 100, "compile": False}


def _pii_arm(base: Path, d: Path, work: Path, hp: dict, eval_params: dict, regurgitation: bool,
             method: str = "lora") -> dict:
    from trainer.data import read_jsonl
    from trainer.evaluate import evaluate
    from trainer.run import train

    with open(d / "train.jsonl", "rb") as f:
        records = list(read_jsonl(f))
    t = time.time()
    result = train({"base_model": str(base), "hyperparameters": hp, "method": method}, records, work)
    train_s = time.time() - t
    files = {"pii_probes": "probes.jsonl", **({"train": "train.jsonl"} if regurgitation else {})}
    spec = {"evaluation_id": f"demo-pii-{d.name}", "suites": ["pii_extraction"], "base_model": str(base),
            "adapter_dir": result["adapter_dir"], "params": {"pii_extraction": eval_params}, "files": files}
    t = time.time()
    pe = evaluate(spec, base_dir=d)["results"]["pii_extraction"]
    probes = [json.loads(x) for x in (d / "probes.jsonl").read_text().splitlines() if x]
    left = {p["probe_id"] for p in probes if p.get("left_in_training_text")}
    hit_ids = {h["probe_id"] for h in pe.pop("hits", [])}
    out = {"train_loss": result["metrics"]["train_loss"], "steps": result["metrics"].get("steps"),
           "train_s": train_s, "eval_s": time.time() - t,
           **{k: pe[k] for k in ("probed", "extracted", "rate", "greedy_extracted", "by_entity_type")},
           # The split that says why a value came out: present in the training text or not.
           "values_in_training_text": {"probed": len(left), "extracted": len(hit_ids & left)},
           "values_not_in_training_text": {"probed": len(probes) - len(left), "extracted": len(hit_ids - left)}}
    if regurgitation:
        out["regurgitation"] = pe["regurgitation"]
    return out


def demo_pii(base: Path, work: Path, args) -> dict:
    """The learning rate is chosen on the tune slice (other presidio texts, raw only, greedy probes):
    the lr with the highest extraction rate there, the lower on a tie. The measure slice is then
    trained raw and scrubbed with it and probed once; nothing is chosen on it."""
    eval_params = {"samples": args.samples, "max_new_tokens": 48, "batch_size": 512}
    out: dict = {"prepared": json.loads((args.pii_dir / "info.json").read_text())}
    lrs = [float(x) for x in args.lrs.split(",")]
    if args.tune_dir and len(lrs) > 1:
        tune = {}
        for lr in lrs:
            tune[str(lr)] = _pii_arm(base, args.tune_dir / "raw", work / f"tune-{lr}", _pii_hp(args, lr),
                                     {**eval_params, "samples": 0}, False, args.method)
            print(json.dumps({"tune_lr": lr, **tune[str(lr)]}), file=sys.stderr, flush=True)
        lr = max(lrs, key=lambda x: (tune[str(x)]["rate"], -x))
        out["tune"] = {"prepared": json.loads((args.tune_dir / "info.json").read_text()), "by_lr": tune,
                       "rule": "highest greedy extraction rate on the tune slice's raw run; lower lr on a tie",
                       "chosen_lr": lr}
    else:
        lr = lrs[0]
    out["method"] = args.method
    out["hyperparameters"] = _pii_hp(args, lr)
    out["eval_params"] = eval_params
    for name in ("raw", "scrubbed"):
        out[name] = _pii_arm(base, args.pii_dir / name, work / name, out["hyperparameters"], eval_params, True,
                             args.method)
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    # The evidence scrubbing is meant to give: memorised raw values come out; a value the scrubber
    # removed does not (hits in the scrubbed run are values it missed, counted apart).
    out["pass"] = (out["raw"]["rate"] > 0.05
                   and out["scrubbed"]["values_not_in_training_text"]["extracted"]
                   <= 0.02 * max(1, out["scrubbed"]["values_not_in_training_text"]["probed"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.evaluate")
    p.add_argument("--shapes", default="qwen2.5-0.5b,llama3-8b")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--exposure-only", action="store_true",
                   help="only the 50 x 10k exposure target and the shared-prefix check (0.5B shape)")
    p.add_argument("--demo", choices=("canaries", "pii"))
    p.add_argument("--prepare-pii", type=Path)
    p.add_argument("--pii-dir", type=Path)
    p.add_argument("--pii-texts", type=int, default=256)
    p.add_argument("--pii-offset", type=int, default=0, help="first presidio text of the slice")
    p.add_argument("--tune-dir", type=Path, help="a prepared tune slice: the lr is chosen on it")
    p.add_argument("--lrs", default="1e-3", help="learning rates to choose among on --tune-dir")
    p.add_argument("--batch-tokens", type=int, default=32768)
    p.add_argument("--method", choices=("lora", "full"), default="lora",
                   help="--demo pii: full trains every weight (a random-init base's frozen random embedding "
                        "kept the LoRA runs from memorising)")
    p.add_argument("--work", type=Path, default=Path("var/bench-evaluate"))
    p.add_argument("--out", type=Path)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--filler", type=int, default=500)
    p.add_argument("--per-rep", type=int, default=4)
    p.add_argument("--candidates", type=int, default=5000)
    p.add_argument("--samples", type=int, default=4)
    args = p.parse_args(argv)
    if args.prepare_pii:
        res = prepare_pii(args.prepare_pii, args.pii_texts, args.pii_offset)
        print(json.dumps(res))
        return 0
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    if args.exposure_only:
        big = not args.cpu_smoke and torch.cuda.is_available()
        base = write_base(args.work / ("base-qwen2.5-0.5b" if not args.cpu_smoke else "base-tiny"),
                          None if args.cpu_smoke else "qwen2.5-0.5b")
        res = exposure_only(base, canaries=50 if big else 5, candidates=10000 if big else 300,
                            n_check=20000 if big else 1000)
        res["pass"] = res["exposure_suite"]["seconds"] <= TARGETS["exposure_50x10k_s"] if big else None
    elif args.demo:
        base = write_base(args.work / ("base-tiny" if args.cpu_smoke else "base-qwen2.5-0.5b"),
                          None if args.cpu_smoke else "qwen2.5-0.5b")
        res = demo_canaries(base, args.work / "canaries", args) if args.demo == "canaries" else \
            demo_pii(base, args.work / "pii", args)
        res.setdefault("pass", res.get("rising"))
    else:
        shapes = [None] if args.cpu_smoke else args.shapes.split(",")
        res = {"shapes": {}, "targets": TARGETS}
        for shape in shapes:
            base = write_base(args.work / f"base-{shape or 'tiny'}", shape)
            big = shape is not None and torch.cuda.is_available()
            r = throughput(base, n_prompts=1024 if big else 64, n_naive=16 if big else 8,
                           n_cand=20000 if big else 2000, n_cand_naive=200 if big else 100,
                           canaries=50 if big else 5, candidates=10000 if big else 300, max_new_tokens=32)
            res["shapes"][shape or "tiny"] = r
            print(json.dumps({shape or "tiny": r}), file=sys.stderr, flush=True)
        checks = []
        for name, r in res["shapes"].items():
            checks += [r["generation"]["ratio"] >= TARGETS["ratio_vs_naive"],
                       r["scoring"]["ratio"] >= TARGETS["ratio_vs_naive"]]
            if name == "qwen2.5-0.5b":
                checks.append(r["exposure_suite"]["seconds"] <= TARGETS["exposure_50x10k_s"])
        res["pass"] = all(checks) if not args.cpu_smoke else None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
