"""DPO throughput: Pedigree's packed DPO (trainer.dpo on the trainer's engine) against TRL's DPOTrainer + PEFT,
same data, same model, side by side in one run.

    python -m bench.dpo                       # both shapes on one GPU (H200)
    python -m bench.dpo --shapes qwen2.5-0.5b
    python -m bench.dpo --cpu-smoke           # tiny shape on the CPU, a couple of minutes

Data: the Anthropic HH pairs of ../shared/corpora/preference (hh-rlhf_harmless-base_test, 2,308 usable pairs),
split into prompt / chosen / rejected by Pedigree's importer and tokenised with the trainer's byte-level
tokenizer under ChatML (trainer.tiny), truncated to --max-seq-len per sequence. Nothing is tuned on them.
Models: random-init Qwen2.5-0.5B and Llama-3-8B shapes (bench.train.SHAPES), LoRA r16 on all linear layers,
bf16 on the GPU (fp32 on the CPU), beta 0.1, sigmoid loss.

TRL runs with its recommended settings: the reference is the PEFT base with the adapter disabled (its default
for a PEFT model), `padding_free=True` (TRL's own flag), no precomputed reference log-probs, and the largest
per-device batch (from --trl-batches) that survives one step on the epoch's longest pairs. Ours caches the
reference log-probs in a first pass; that pass is counted in our time.

Real tokens: per pair the prompt once plus both answers (what a pair holds, whatever either trainer does with
it). TRL's tokens per step are its batch size times the mean pair (its sampler draws pairs at random);
ours are counted exactly. Peak memory: torch.cuda.max_memory_allocated per trainer (None on the CPU).
The last stdout line is one JSON object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.train import SHAPES, free_memory, machine, make_model, smoke_shape, write_config

ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared" / "corpora" / "preference" / "hh-rlhf_harmless-base_test.jsonl.gz"
TARGETS = {"ratio_vs_trl": 3.0, "memory_vs_trl_max": 1.0}


def hh_records(path: Path, limit: int | None) -> list[dict]:
    """The HH lines through Pedigree's own importer, as pedigree export records (train split)."""
    from app.examples import parsing
    from trainer.data import content_sha256

    out = []
    with gzip.open(path) as f:
        for i, raw in enumerate(f, 1):
            r = parsing.parse_line(raw.rstrip(b"\n"), i, "preference", parsing.Defaults(shape="hh"))
            if isinstance(r, parsing.LineError):
                continue
            for c in r:
                out.append({"revision_id": str(uuid.UUID(int=len(out) + 1)), "split": "train", "format": "preference",
                            "content": c.content, "content_sha256": content_sha256(c.content)})
            if limit and len(out) >= limit:
                break
    return out


def fitting(records: list[dict], seq_len: int, limit: int | None) -> list[dict]:
    """The pairs whose two rendered sequences fit seq_len: TRL drops a pair whose prompt fills max_length and
    cuts answers, ours truncates; measuring both on pairs neither touches keeps the work the same."""
    from trainer import dpo
    from trainer.data import Renderer
    from trainer.tiny import build_tokenizer

    seqs = dpo.tokenize_pairs(Renderer(build_tokenizer(), 1 << 20), records)
    keep = [r for k, r in enumerate(records)
            if len(seqs[2 * k].input_ids) <= seq_len and len(seqs[2 * k + 1].input_ids) <= seq_len]
    return keep[:limit] if limit else keep


def patch_trl_logprobs_for_cpu() -> None:
    """TRL's DPOTrainer computes per-token log-probs with a Triton kernel that needs CUDA. Without a GPU the
    same math in plain torch stands in for it (TRL's loss, batching and reference handling unchanged)."""
    import torch

    if torch.cuda.is_available():
        return
    import trl.trainer.utils as trl_utils

    class PlainLogProb:
        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk, softcap, scale, outputs):
            logits = hidden @ weight.t()
            if bias is not None:
                logits = logits + bias
            logits = logits * scale
            if softcap is not None:
                logits = softcap * torch.tanh(logits / softcap)
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)
            token = logp.gather(1, targets[:, None]).squeeze(1)
            entropy = -(logp.exp() * logp).sum(-1).detach() if "entropy" in outputs else None
            mean = logits.float().mean(-1).detach() if "mean_logits" in outputs else None
            top1 = (logits.argmax(-1) == targets) if "is_top1" in outputs else None
            return token, entropy, None, mean, top1

    trl_utils._ChunkedLogProbFunction = PlainLogProb


def _pair_tokens(seqs) -> list[int]:
    """Real tokens per pair: the shared prompt once (all of the chosen sequence's prompt part), both answers
    (every token after the generation prompt is a target)."""
    return [len(seqs[k].input_ids) + sum(seqs[k + 1].labels_mask) for k in range(0, len(seqs), 2)]


def run_ours(config_dir: Path, records: list[dict], *, seq_len: int, batch_tokens: int, micro_tokens: int,
             seconds: float, max_steps: int, device, seed: int) -> dict:
    import torch

    from trainer import dpo, hparams
    from trainer.data import Renderer
    from trainer.engine import Engine, make_optimizer
    from trainer.model import attach_lora
    from trainer.packing import build_micro_batch
    from trainer.tiny import build_tokenizer

    free_memory()
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = make_model(config_dir, device, dtype, seed)
    hp = hparams.resolve({"lora_r": 16, "lora_alpha": 32, "max_seq_len": seq_len, "seed": seed})
    torch.manual_seed(seed)
    peft_model = attach_lora(model, hp)
    backend = "pedigree_varlen" if on_gpu else "pedigree_sdpa"
    engine = Engine(peft_model, backend=backend, device=device, autocast_dtype=torch.bfloat16 if on_gpu else None)
    seqs = dpo.tokenize_pairs(Renderer(build_tokenizer(), seq_len), records)
    plan = dpo.plan(seqs, seq_len)
    pair_tok = _pair_tokens(seqs)
    n = len(seqs)
    per_mb = max(1, micro_tokens // plan.row_len)
    rows_per_step = max(1, batch_tokens // plan.row_len)

    def mbs_of(rows):
        return [build_micro_batch(rows[i:i + per_mb], seqs, plan.row_len, 0).to(device)
                for i in range(0, len(rows), per_mb)]

    # One untimed forward first, as TRL's first step is untimed (kernel selection, allocator warm-up).
    dpo.reference_logps(engine, peft_model, mbs_of(plan.rows[:per_mb]), n, device)
    if on_gpu:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    ref = dpo.reference_logps(engine, peft_model, (mb for i in range(0, len(plan.rows), per_mb)
                                                   for mb in mbs_of(plan.rows[i:i + per_mb])), n, device)
    if on_gpu:
        torch.cuda.synchronize(device)
    ref_s = time.perf_counter() - t0
    ntok = dpo.token_counts(seqs, device)
    opt = make_optimizer(engine.params, lr=5e-6, weight_decay=0.0, device=device)
    totals = dpo.Totals(device)
    steps = tokens = 0
    t0 = time.perf_counter()
    step_rows = [plan.rows[i:i + rows_per_step] for i in range(0, len(plan.rows), rows_per_step)]
    while True:
        for rows in step_rows:
            mbs = mbs_of(rows)
            pairs = sum(len(r) for r in rows) // 2
            dpo.backward_step(engine, mbs, ref, ntok, n, pairs, beta=0.1, loss_type="sigmoid", totals=totals)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            tokens += sum(pair_tok[i // 2] for r in rows for i in r if i % 2 == 0)
            if steps >= max_steps or time.perf_counter() - t0 >= seconds:
                break
        else:
            continue
        break
    if on_gpu:
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    # The pairs the timed steps covered: their share of the reference pass is charged to us.
    covered = min(1.0, tokens / max(1, sum(pair_tok)))
    wall = train_s + ref_s * covered
    out = {"trainer": "ours", "steps": steps, "tokens": tokens, "train_s": round(train_s, 3),
           "reference_pass_s": round(ref_s, 3), "reference_share_charged": round(covered, 4),
           "tokens_per_s": tokens / wall if wall else None, "rows_per_step": rows_per_step,
           "packing_efficiency": round(plan.efficiency, 4), **dpo.summary(totals.values()),
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None}
    del engine, peft_model, model
    free_memory()
    return out


def run_trl(config_dir: Path, records: list[dict], *, seq_len: int, batch: int, seconds: float, max_steps: int,
            device, seed: int, longest_first: bool, tmp: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from app.snapshots.formats import to_trl
    from trainer.tiny import build_tokenizer

    patch_trl_logprobs_for_cpu()
    free_memory()
    on_gpu = device.type == "cuda"
    model = make_model(config_dir, device, torch.bfloat16 if on_gpu else torch.float32, seed)
    tok = build_tokenizer()
    rows = [to_trl("preference", r["content"]) for r in records]
    lengths = [len(json.dumps(r)) for r in rows]
    if longest_first:
        # The epoch's longest pairs first: a batch size that dies on them is not one a user can train with.
        order = sorted(range(len(rows)), key=lambda i: -lengths[i])[:batch]
        rows = [rows[i] for i in order]
    data = Dataset.from_list(rows)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())
            if len(stamps) > 2 and stamps[-1] - stamps[1] >= seconds:
                control.should_training_stop = True

    args = DPOConfig(output_dir=str(tmp / f"trl-{batch}"), report_to=[], per_device_train_batch_size=batch,
                     max_length=seq_len, truncation_mode="keep_start", beta=0.1, loss_type=["sigmoid"],
                     bf16=on_gpu, use_cpu=not on_gpu, padding_free=True, learning_rate=5e-6,
                     max_steps=1 if longest_first else max_steps, logging_steps=10**9, save_strategy="no",
                     dataset_num_proc=None, seed=seed, gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[Clock()])
    ds = trainer.train_dataset
    per_pair = [len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"]) for x in ds]
    trainer.train()
    # The first step (compile, allocator warm-up) is not timed.
    timed = len(stamps) - 1
    span = stamps[-1] - stamps[0] if timed > 0 else None
    mean_pair = sum(per_pair) / max(1, len(per_pair))
    out = {"trainer": "trl", "batch": batch, "steps": len(stamps), "timed_steps": timed,
           "tokens_per_s": timed * batch * mean_pair / span if span else None, "mean_pair_tokens": round(mean_pair, 1),
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None}
    del trainer, model
    free_memory()
    return out


def ours_or_halve(config_dir: Path, records: list[dict], *, micro_tokens: int, seq_len: int, **kw) -> dict:
    """Ours at `micro_tokens` per forward, halved on OOM (twice at most, never below one pair): on an 80 GB
    card the 8B shape's 32k-token micro-batch does not fit beside the fp32 logits of its LM head. The
    result names the micro-batch that ran and the sizes that did not."""
    import torch

    tried = []
    while True:
        try:
            r = run_ours(config_dir, records, micro_tokens=micro_tokens, seq_len=seq_len, **kw)
            r["micro_tokens"], r["oom_micro_tokens"] = micro_tokens, tried
            return r
        except torch.OutOfMemoryError:
            if len(tried) == 2 or micro_tokens // 2 < 2 * seq_len:
                raise
        # Outside the handler: its traceback holds the failed step's activations.
        tried.append(micro_tokens)
        free_memory()
        micro_tokens //= 2


def trl_largest(config_dir, records, batches, **kw) -> dict:
    """TRL's largest batch that survives one step on the epoch's longest pairs, then timed on the data."""
    import torch

    tried = []
    for b in batches:
        try:
            run_trl(config_dir, records, batch=b, longest_first=True, **kw)
        except torch.OutOfMemoryError:
            tried.append(b)
            free_memory()
            continue
        out = run_trl(config_dir, records, batch=b, longest_first=False, **kw)
        return {**out, "oom_on_longest": tried}
    return {"trainer": "trl", "tokens_per_s": None, "oom_on_longest": tried}


def main(argv=None) -> dict:
    import tempfile

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="qwen2.5-0.5b,llama3-8b")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU, few pairs, short windows")
    ap.add_argument("--pairs", type=int, default=None, help="first N HH pairs (default: all)")
    ap.add_argument("--max-seq-len", type=int, default=2048, help="per sequence (prompt + one answer); pairs "
                                                                  "longer than this are left out of the data")
    ap.add_argument("--seconds", type=float, default=40.0, help="timed window per trainer")
    ap.add_argument("--max-steps", type=int, default=10**6)
    ap.add_argument("--trl-batches", default="64,48,32,24,16,12,8,6,4,2,1")
    ap.add_argument("--ours-batch-tokens", type=int, default=65536)
    ap.add_argument("--ours-micro-tokens", type=int, default=32768)
    ap.add_argument("--hh", type=Path, default=HH)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (bench/results/dpo.json)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu_smoke else "cpu")
    if a.cpu_smoke:
        a.pairs, a.max_seq_len, a.seconds, a.max_steps = a.pairs or 48, min(a.max_seq_len, 512), 8.0, 6
        a.ours_batch_tokens, a.ours_micro_tokens, a.trl_batches = 2048, 2048, "4"
    records = fitting(hh_records(a.hh, None), a.max_seq_len, a.pairs)
    batches = [int(x) for x in a.trl_batches.split(",")]
    results: dict = {"bench": "dpo", "pairs": len(records), "max_seq_len": a.max_seq_len,
 "device": str(device),
                     "cpu_smoke": a.cpu_smoke, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "machine": machine(), "shapes": {}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name in a.shapes.split(","):
            shape = smoke_shape(SHAPES[name]) if a.cpu_smoke else SHAPES[name]
            cfg = write_config(name, shape, tmp / "configs")
            common = {"seq_len": a.max_seq_len, "seconds": a.seconds, "max_steps": a.max_steps, "device": device,
                      "seed": a.seed}
            ours = ours_or_halve(cfg, records, batch_tokens=a.ours_batch_tokens, micro_tokens=a.ours_micro_tokens,
                                 **common)
            trl = trl_largest(cfg, records, batches, tmp=tmp, **common)
            ratio = ours["tokens_per_s"] / trl["tokens_per_s"] if trl.get("tokens_per_s") else None
            mem = (ours["peak_memory_gib"] / trl["peak_memory_gib"]
                   if ours.get("peak_memory_gib") and trl.get("peak_memory_gib") else None)
            shape_ok = ratio is not None and ratio >= TARGETS["ratio_vs_trl"] and (
                mem is None or mem <= TARGETS["memory_vs_trl_max"])
            ok = ok and shape_ok
            results["shapes"][name] = {"ours": ours, "trl": trl, "ratio": ratio, "memory_ratio": mem, "pass": shape_ok}
            print(json.dumps({name: results["shapes"][name]}), flush=True)
    results["targets"] = TARGETS
    # On the CPU the figures say the code runs, not how fast it is: the targets are the GPU's.
    results["pass"] = ok if not a.cpu_smoke else all(
        s["ours"]["tokens_per_s"] and s["trl"].get("tokens_per_s") for s in results["shapes"].values())
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
