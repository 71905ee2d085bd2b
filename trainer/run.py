"""train(): a verified snapshot export in, a PEFT adapter, metrics and per-example token counts out.

One run in four steps over a RunConfig parsed once from the spec: `prepare` (verify the export, seed,
load the base model, tokenize), `build` (LoRA, attention backend, engine, packing plan, step count),
`fit` (validation, the optimizer loop, validation again) and `finish` (metrics, per-example counts,
the adapter on disk). The steps run in this order with nothing in between, so the random streams,
and with them the adapter a seed produces, are those of a single pass.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import attention, dpo, full, kernels, modelcard, packing
from trainer.config import RunConfig
from trainer.data import Renderer, Tokenized, verify_records
from trainer.engine import DistInfo, Engine, dist_from_env, lr_lambda, make_optimizer
from trainer.errors import TrainError
from trainer.loader import Prefetcher
from trainer.model import attach_lora, load_base

EventSink = Callable[[dict], None]

# Compiling the decoder layers takes about a minute and gains ~1.5x on small models (bench/results):
# worth it from a few minutes of training on.
COMPILE_AUTO_TOKENS = 20_000_000


def _event(
    kind: str, message: str, *, level: str = "info", step: int | None = None, data: dict | None = None
):
    return {"kind": kind, "level": level, "message": message, "step": step, "data": data or {}}


def _micro_batches(rows, examples, hp, pad_id, dist, row_len: int | None = None):
    """This rank's micro-batches of one step's rows (rows of max_seq_len tokens; DPO's hold a pair's two
    sequences, so theirs are twice as long)."""
    row_len = row_len or hp["max_seq_len"]
    mine = rows[dist.rank :: dist.world]
    per = max(1, hp["micro_batch_tokens"] // row_len)
    return [
        packing.build_micro_batch(mine[i : i + per], examples, row_len, pad_id)
        for i in range(0, len(mine), per)
    ]


def _all_sum(values: list[float], dist, device) -> list[float]:
    if dist.world <= 1:
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


class Runtime:
    """Where this process trains (rank, device), where its events go, and how a cancel reaches it."""

    def __init__(self, hp: Mapping[str, Any], on_event: EventSink, should_stop: Callable[[], bool] | None):
        self.dist: DistInfo = dist_from_env()
        self.device = (
            torch.device("cuda", self.dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
        self.on_gpu = self.device.type == "cuda"
        self.emit: EventSink = on_event if self.dist.main else (lambda e: None)
        self._should_stop = should_stop
        self._log_every = hp["log_every"]

    def all_sum(self, values: list[float]) -> list[float]:
        return _all_sum(values, self.dist, self.device)

    def check_stop(self, step: int | None = None) -> None:
        stop = self._should_stop is not None and self._should_stop()
        if self.dist.world > 1:
            # Ranks must agree, or one would leave while the others wait in an all-reduce. Agreeing
            # costs a synchronisation, so ranks vote only where the loop synchronises anyway.
            if step is not None and step % self._log_every:
                return
            stop = self.all_sum([float(stop)])[0] > 0
        if stop:
            raise TrainError("cancelled", "the run was cancelled")


@dataclass
class Prepared:
    manifest: str
    tokenizer: Any
    model: Any
    train_ex: list[Tokenized]
    val_ex: list[Tokenized]
    # method dpo: train_ex / val_ex are sequences, chosen at 2k and rejected at 2k+1 for pair k.
    pairs: bool = False
    # Canary sequences (issue 17): trained like examples, never reported as examples.
    canary_ex: list[Tokenized] = field(default_factory=list)

    @property
    def stream(self) -> list[Tokenized]:
        """What is packed and trained: the train examples, then every canary copy."""
        return self.train_ex + self.canary_ex if self.canary_ex else self.train_ex


@dataclass
class Built:
    peft_model: Any
    engine: Engine
    backend: str
    pad_id: int
    train_plan: packing.PackPlan
    val_plan: packing.PackPlan | None
    rows_per_step: int
    total_steps: int


@dataclass
class Fitted:
    val_before: float | None = None
    val_after: float | None = None
    train_loss: float | None = None
    # method dpo: dpo.summary() of the validation pairs before and after, and of the last logged window.
    dpo_before: dict = field(default_factory=dict)
    dpo_after: dict = field(default_factory=dict)
    dpo_train: dict = field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    canary_tokens: int = 0
    train_time: float = 0.0
    # Per train example: tokens trained on and epochs seen, for the lineage rows.
    seen_tokens: list[int] = field(default_factory=list)
    seen_epochs: list[int] = field(default_factory=list)


def prepare(cfg: RunConfig, rt: Runtime, records: Iterable[dict]) -> Prepared:
    records, manifest = verify_records(records, cfg.expected_manifest_sha256)
    rt.emit(_event("log", f"export verified: {len(records)} records, manifest {manifest}"))
    seed = cfg.hp["seed"]
    random.seed(seed)
    torch.manual_seed(seed)
    # bf16 weights with autocast on the GPU; fp32 on the CPU, where bf16 matmuls are slow and the
    # tests want tight tolerances.
    # Full fine-tuning keeps fp32 weights (the master copy AdamW updates) and computes under bf16 autocast.
    dtype = torch.bfloat16 if rt.on_gpu and cfg.method != "full" else torch.float32
    if cfg.method == "dpo":
        dpo.check_records(records)
    tokenizer, model = load_base(cfg.base_model, cfg.adapter, rt.device, dtype)
    rt.emit(
        _event("log", f"loaded {cfg.base_model} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    )
    rt.check_stop()

    max_seq_len = cfg.hp["max_seq_len"]
    renderer = Renderer(tokenizer, max_seq_len)
    train_ex, val_ex = [], []
    if cfg.method == "dpo":
        train_ex = dpo.tokenize_pairs(renderer, [r for r in records if r["split"] == "train"])
        val_ex = dpo.tokenize_pairs(renderer, [r for r in records if r["split"] != "train"])
    else:
        for i, rec in enumerate(records):
            ex = renderer.tokenize(i, rec)
            (train_ex if rec["split"] == "train" else val_ex).append(ex)
    if not train_ex:
        raise TrainError("invalid_data", "the snapshot has no train examples")
    truncated = sum(e.truncated for e in train_ex + val_ex)
    if truncated:
        rt.emit(_event("log", f"{truncated} examples truncated to max_seq_len {max_seq_len}", level="warn"))
    # Examples with nothing to learn from still count as seen, but contribute no loss.
    no_targets = sum(1 for e in train_ex if e.supervised == 0)
    if no_targets:
        rt.emit(_event("log", f"{no_targets} train examples have no supervised tokens", level="warn"))
    canary_ex = _canary_examples(cfg, tokenizer, max_seq_len, len(train_ex) + len(val_ex))
    if canary_ex:
        rt.emit(_event("log", f"{len(cfg.canaries)} canaries, {len(canary_ex)} canary sequences per epoch"))
    return Prepared(manifest, tokenizer, model, train_ex, val_ex, pairs=cfg.method == "dpo", canary_ex=canary_ex)


def _canary_examples(cfg: RunConfig, tokenizer, max_seq_len: int, first_index: int) -> list[Tokenized]:
    """Each canary's rendered text as a raw sequence, every token a target, `repetitions` copies.

    Raw text, no chat template: the memorization suite scores exactly these tokens. Each copy is its
    own packed sequence, so an epoch trains on the canary `repetitions` times.
    """
    from trainer.evaluate.common import render_canary

    out = []
    for c in cfg.canaries:
        ids = list(tokenizer(render_canary(c["template"], c["secret"]), add_special_tokens=False)["input_ids"])
        ids = ids[:max_seq_len]
        for _ in range(c["repetitions"]):
            out.append(Tokenized(first_index + len(out), f"canary:{c['id']}", ids, [True] * len(ids),
                                 meta={"canary": c["id"]}))
    return out


def _kernels(spec: str, rt: Runtime, compiled: bool):
    if spec == "liger" and not (rt.on_gpu and kernels.available()):
        raise TrainError("invalid_hyperparameters", "hyperparameters.kernels: liger needs a CUDA GPU and liger-kernel")
    if spec == "liger" and compiled:
        raise TrainError(
            "invalid_hyperparameters",
            "hyperparameters.kernels: liger's layer kernels do not run inside compiled layers; set compile to false",
        )
    return spec


def build(cfg: RunConfig, rt: Runtime, prep: Prepared) -> Built:
    hp = cfg.hp
    torch.manual_seed(hp["seed"])
    if cfg.method == "full":
        fits = full.check_fits(prep.model, hp, rt.device)
        budget = "unknown" if fits["budget"] is None else f"{fits['budget'] / full.GIB:.2f} GiB"
        rt.emit(_event("log", f"full fine-tuning: {fits['parameters']:,} parameters, estimated "
                              f"{fits['total'] / full.GIB:.2f} GiB needed, {budget} available"))
        peft_model = full.prepare(prep.model, hp)
    else:
        peft_model = attach_lora(prep.model, hp)
    if hp["gradient_checkpointing"] and cfg.method != "full":
        peft_model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    backend = hp["attention"] if hp["attention"] != "auto" else attention.default_backend(rt.device)
    if backend in ("pedigree_varlen", "pedigree_flex") and not rt.on_gpu:
        # varlen_attn is CUDA-only and flex_attention has no CPU backward.
        raise TrainError("invalid_hyperparameters", f"hyperparameters.attention: {backend} needs a CUDA GPU")
    compile_layers = hp["compile"]
    if compile_layers == "auto":
        train_tokens = sum(len(e.input_ids) for e in prep.stream) * hp["epochs"]
        compile_layers = rt.on_gpu and train_tokens >= COMPILE_AUTO_TOKENS
    engine = Engine(
        peft_model,
        backend=backend,
        device=rt.device,
        autocast_dtype=torch.bfloat16 if rt.on_gpu else None,
        loss_chunk=hp["loss_chunk"],
        dist=rt.dist,
        compile=compile_layers,
        kernels=_kernels(hp["kernels"], rt, bool(compile_layers)),
    )
    pad_id = prep.tokenizer.pad_token_id if prep.tokenizer.pad_token_id is not None else 0

    pack = dpo.plan if prep.pairs else packing.plan
    train_plan = pack(prep.stream, hp["max_seq_len"])
    val_plan = pack(prep.val_ex, hp["max_seq_len"]) if prep.val_ex else None
    rows_per_step = max(1, hp["batch_tokens"] // train_plan.row_len, rt.dist.world)
    total_steps = math.ceil(len(train_plan.rows) / rows_per_step) * hp["epochs"]
    if hp["max_steps"]:
        total_steps = min(total_steps, hp["max_steps"])
    rt.emit(
        _event(
            "log",
            f"{len(prep.train_ex)} train / {len(prep.val_ex)} validation examples; {len(train_plan.rows)} "
            f"rows of {hp['max_seq_len']} tokens, packing efficiency {train_plan.efficiency:.3f}; "
            f"{total_steps} steps; attention {backend}; compiled {bool(compile_layers)}; "
            f"kernels {','.join(engine.kernels) or 'none'}; "
            f"{rt.dist.world} rank(s)",
        )
    )
    return Built(peft_model, engine, backend, pad_id, train_plan, val_plan, rows_per_step, total_steps)


def _validate(cfg: RunConfig, rt: Runtime, prep: Prepared, built: Built) -> float | None:
    if built.val_plan is None:
        return None
    built.peft_model.eval()
    mbs = _micro_batches(built.val_plan.rows, prep.val_ex, cfg.hp, built.pad_id, rt.dist, built.val_plan.row_len)
    s, n = built.engine.eval_losses(mb.to(rt.device) for mb in mbs)
    s, n = rt.all_sum([s, float(n)])
    built.peft_model.train()
    return s / n if n else None


def _schedule(cfg: RunConfig, built: Built) -> list[tuple[int, list[list[int]]]]:
    """(epoch, rows) of every optimizer step."""
    rows = built.train_plan.rows
    schedule = []
    for epoch in range(cfg.hp["epochs"]):
        order = list(range(len(rows)))
        # Row order changes per epoch; which examples share a row does not (packing is by length).
        random.Random(cfg.hp["seed"] * 1000003 + epoch).shuffle(order)
        for s0 in range(0, len(order), built.rows_per_step):
            schedule.append((epoch, [rows[i] for i in order[s0 : s0 + built.rows_per_step]]))
    return schedule[: built.total_steps]


def fit(cfg: RunConfig, rt: Runtime, prep: Prepared, built: Built) -> Fitted:
    hp = cfg.hp
    try:
        if prep.pairs:
            return _fit_dpo(cfg, rt, prep, built)
        val_before = _validate(cfg, rt, prep, built)
        if val_before is not None:
            rt.emit(_event("metrics", f"validation loss before training {val_before:.4f}", step=0,
                           data={"val_loss": val_before}))
        fitted = _optimize(cfg, rt, prep, built)
        fitted.val_before = val_before
        fitted.val_after = _validate(cfg, rt, prep, built)
        if fitted.val_after is not None:
            rt.emit(_event("metrics", f"validation loss after training {fitted.val_after:.4f}",
                           step=fitted.steps, data={"val_loss": fitted.val_after}))
    except torch.OutOfMemoryError as exc:
        raise TrainError(
            "out_of_memory",
            f"CUDA out of memory (batch_tokens {hp['batch_tokens']}, micro_batch_tokens "
            f"{hp['micro_batch_tokens']}, max_seq_len {hp['max_seq_len']}): lower micro_batch_tokens or "
            f"enable gradient_checkpointing",
        ) from exc
    return fitted


def _optimize(cfg: RunConfig, rt: Runtime, prep: Prepared, built: Built) -> Fitted:
    """The optimizer loop; metrics every `log_every` steps and heartbeats every 10 s."""
    hp, engine, device, total_steps = cfg.hp, built.engine, rt.device, built.total_steps
    if cfg.method == "full":
        optimizer = full.make_optimizer(engine.params, hp, device)
    else:
        optimizer = make_optimizer(engine.params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"],
                                   device=device)
    warmup = int(hp["warmup_ratio"] * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(hp["lr_scheduler"], total_steps, warmup))
    n = len(prep.train_ex)
    stream = prep.stream
    sup_of = [e.supervised for e in stream]
    len_of = [len(e.input_ids) for e in stream]
    out = Fitted(seen_tokens=[0] * n, seen_epochs=[0] * n)
    window = {"loss": 0.0, "sup": 0, "real": 0, "t": 0.0}
    last_beat = time.time()
    if rt.on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    built.peft_model.train()

    make = _step_maker(cfg, rt, built, stream)
    loader = Prefetcher(_schedule(cfg, built), make, depth=2)
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)
    if rt.on_gpu:
        torch.cuda.synchronize(device)
    t_window = time.perf_counter()
    try:
        for epoch, step_rows, host_mbs in loader:
            rt.check_stop(out.steps)
            step_sup = sum(sup_of[i] for row in step_rows for i in row)
            mbs = [mb.to(device) for mb in host_mbs]
            loss_acc += engine.backward_step(mbs, max(1, step_sup))
            if hp["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(engine.params, hp["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            out.steps += 1
            step_real = step_canary = 0
            for row in step_rows:
                for i in row:
                    if i >= n:
                        # A canary copy: trained, but neither an example nor its tokens in lineage.
                        step_canary += len_of[i]
                        continue
                    out.seen_tokens[i] += len_of[i]
                    out.seen_epochs[i] += 1
                    step_real += len_of[i]
            window["sup"] += step_sup
            window["real"] += step_real + step_canary
            out.tokens += step_real
            out.canary_tokens += step_canary
            out.supervised_tokens += step_sup
            # Synchronise only at log points: a per-step sync would stall the launch queue.
            if out.steps % hp["log_every"] == 0 or out.steps == total_steps:
                window["loss"] = rt.all_sum([float(loss_acc)])[0]
                loss_acc.zero_()
                window["t"] = time.perf_counter() - t_window
                out.train_time += window["t"]
                data = {
                    "train_loss": window["loss"] / max(1, window["sup"]),
                    "tokens_per_s": window["real"] / max(window["t"], 1e-9),
                    "supervised_tokens_per_s": window["sup"] / max(window["t"], 1e-9),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "epoch": epoch + 1,
                }
                out.train_loss = data["train_loss"]
                rt.emit(_event("metrics", f"step {out.steps}/{total_steps} loss {data['train_loss']:.4f}",
                               step=out.steps, data=data))
                window = {"loss": 0.0, "sup": 0, "real": 0, "t": 0.0}
                t_window = time.perf_counter()
            if time.time() - last_beat >= 10:
                rt.emit(_event("heartbeat", "training", step=out.steps))
                last_beat = time.time()
    finally:
        loader.close()
    return out


def _step_maker(cfg: RunConfig, rt: Runtime, built: Built, stream: list[Tokenized]):
    def make(item):
        epoch, step_rows = item
        mbs = _micro_batches(step_rows, stream, cfg.hp, built.pad_id, rt.dist, built.train_plan.row_len)
        return epoch, step_rows, [mb.pin() for mb in mbs] if rt.on_gpu else mbs

    return make


def _all_micro_batches(cfg: RunConfig, rt: Runtime, built: Built, plan: packing.PackPlan, seqs: list[Tokenized]):
    return [mb.to(rt.device) for mb in _micro_batches(plan.rows, seqs, cfg.hp, built.pad_id, rt.dist, plan.row_len)]


def _reference(cfg: RunConfig, rt: Runtime, built: Built, plan: packing.PackPlan | None,
               seqs: list[Tokenized]) -> torch.Tensor:
    """The cached reference log-probs of every sequence (this rank's share, summed over ranks)."""
    n = len(seqs)
    if plan is None or not n:
        return torch.zeros(n, device=rt.device)
    ref = dpo.reference_logps(built.engine, built.peft_model, _all_micro_batches(cfg, rt, built, plan, seqs), n,
                              rt.device)
    if rt.dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(ref)
    return ref


def _fit_dpo(cfg: RunConfig, rt: Runtime, prep: Prepared, built: Built) -> Fitted:
    hp, engine = cfg.hp, built.engine
    beta, loss_type = hp["beta"], hp["loss_type"]
    t0 = time.perf_counter()
    ref_train = _reference(cfg, rt, built, built.train_plan, prep.train_ex)
    ref_val = _reference(cfg, rt, built, built.val_plan, prep.val_ex)
    rt.emit(_event("log", f"reference log-probs of {len(prep.train_ex) + len(prep.val_ex)} sequences "
                          f"(adapter disabled) in {time.perf_counter() - t0:.1f}s"))
    rt.check_stop()
    ntok_train = dpo.token_counts(prep.train_ex, rt.device)
    ntok_val = dpo.token_counts(prep.val_ex, rt.device)

    def validate() -> dict:
        if built.val_plan is None:
            return {}
        built.peft_model.eval()
        vals = dpo.evaluate(engine, _all_micro_batches(cfg, rt, built, built.val_plan, prep.val_ex), ref_val,
                            ntok_val, len(prep.val_ex), beta=beta, loss_type=loss_type, device=rt.device)
        built.peft_model.train()
        return dpo.summary(rt.all_sum(vals))

    out = Fitted(seen_tokens=[0] * len(prep.train_ex), seen_epochs=[0] * len(prep.train_ex))
    out.dpo_before = validate()
    if out.dpo_before:
        rt.emit(_event("metrics", f"validation DPO loss before training {out.dpo_before['dpo_loss']:.4f}", step=0,
                       data={"val_" + k: v for k, v in out.dpo_before.items()}))
        out.val_before = out.dpo_before["dpo_loss"]
    optimizer = make_optimizer(engine.params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"],
                               device=rt.device)
    total_steps = built.total_steps
    warmup = int(hp["warmup_ratio"] * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(hp["lr_scheduler"], total_steps, warmup))
    stream = prep.train_ex
    n = len(stream)
    len_of = [len(e.input_ids) for e in stream]
    sup_of = [e.supervised for e in stream]
    totals = dpo.Totals(rt.device)
    window = {"sup": 0, "real": 0}
    last_beat = time.time()
    if rt.on_gpu:
        torch.cuda.reset_peak_memory_stats(rt.device)
    built.peft_model.train()
    loader = Prefetcher(_schedule(cfg, built), _step_maker(cfg, rt, built, stream), depth=2)
    t_window = time.perf_counter()
    try:
        for epoch, step_rows, host_mbs in loader:
            rt.check_stop(out.steps)
            step_pairs = sum(len(row) for row in step_rows) // 2
            mbs = [mb.to(rt.device) for mb in host_mbs]
            dpo.backward_step(engine, mbs, ref_train, ntok_train, n, max(1, step_pairs), beta=beta,
                              loss_type=loss_type, totals=totals)
            if hp["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(engine.params, hp["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            out.steps += 1
            for row in step_rows:
                for i in row:
                    out.seen_tokens[i] += len_of[i]
                    out.seen_epochs[i] += 1
                    window["real"] += len_of[i]
                    window["sup"] += sup_of[i]
                    out.tokens += len_of[i]
                    out.supervised_tokens += sup_of[i]
            if out.steps % hp["log_every"] == 0 or out.steps == total_steps:
                stats = dpo.summary(rt.all_sum(totals.values()))
                totals.reset()
                t = time.perf_counter() - t_window
                out.train_time += t
                data = {**stats, "train_loss": stats.get("dpo_loss"),
                        "tokens_per_s": window["real"] / max(t, 1e-9),
                        "supervised_tokens_per_s": window["sup"] / max(t, 1e-9),
                        "learning_rate": scheduler.get_last_lr()[0], "epoch": epoch + 1}
                out.train_loss, out.dpo_train = data["train_loss"], stats
                rt.emit(_event("metrics", f"step {out.steps}/{total_steps} DPO loss {data['train_loss']:.4f} "
                                          f"accuracy {stats.get('rewards_accuracy', 0):.2f}", step=out.steps, data=data))
                window = {"sup": 0, "real": 0}
                t_window = time.perf_counter()
            if time.time() - last_beat >= 10:
                rt.emit(_event("heartbeat", "training", step=out.steps))
                last_beat = time.time()
    finally:
        loader.close()
    out.dpo_after = validate()
    if out.dpo_after:
        out.val_after = out.dpo_after["dpo_loss"]
        rt.emit(_event("metrics", f"validation DPO loss after training {out.val_after:.4f}", step=out.steps,
                       data={"val_" + k: v for k, v in out.dpo_after.items()}))
    return out


def finish(
    cfg: RunConfig, rt: Runtime, prep: Prepared, built: Built, fitted: Fitted, out_dir: Path, t_start: float
) -> dict:
    """Metrics, the per-example counts, and (main rank) the adapter with its card on disk."""
    peak = torch.cuda.max_memory_allocated(rt.device) if rt.on_gpu else None
    t = fitted.train_time
    metrics = {
        "val_loss_before": fitted.val_before,
        "val_loss_after": fitted.val_after,
        "train_loss": fitted.train_loss,
        "steps": fitted.steps,
        "epochs": cfg.hp["epochs"],
        "train_examples": len(prep.train_ex) // 2 if prep.pairs else len(prep.train_ex),
        "validation_examples": len(prep.val_ex) // 2 if prep.pairs else len(prep.val_ex),
        "tokens": fitted.tokens,
        "supervised_tokens": fitted.supervised_tokens,
        "canary_tokens": fitted.canary_tokens,
        "tokens_per_s": (fitted.tokens + fitted.canary_tokens) / t if t else None,
        "supervised_tokens_per_s": fitted.supervised_tokens / t if t else None,
        "packing_efficiency": built.train_plan.efficiency,
        "peak_memory_bytes": peak,
        "trainable_parameters": sum(p.numel() for p in built.engine.params),
        "attention": built.backend,
        "world_size": rt.dist.world,
        "device": torch.cuda.get_device_name(rt.device) if rt.on_gpu else "cpu",
        "manifest_sha256": prep.manifest,
        "wall_s": time.time() - t_start,
        "method": cfg.method,
    }
    if prep.pairs:
        metrics.update({"beta": cfg.hp["beta"], "loss_type": cfg.hp["loss_type"], "adapter": cfg.adapter,
                        "val": {"before": fitted.dpo_before, "after": fitted.dpo_after}, **fitted.dpo_train})
        # One lineage row per preference revision: tokens of both answers' sequences, epochs of the pair.
        examples = [
            {"revision_id": prep.train_ex[k].revision_id,
             "tokens": fitted.seen_tokens[k] + fitted.seen_tokens[k + 1], "epochs": fitted.seen_epochs[k]}
            for k in range(0, len(prep.train_ex), 2)
            if fitted.seen_epochs[k]
        ]
    else:
        examples = [
            {"revision_id": ex.revision_id, "tokens": fitted.seen_tokens[k], "epochs": fitted.seen_epochs[k]}
            for k, ex in enumerate(prep.train_ex)
            if fitted.seen_epochs[k]
        ]
    adapter_dir = out_dir / "adapter"
    if rt.dist.main:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        if cfg.method == "full":
            # The whole model, sharded safetensors + tokenizer, sha256 per file (trainer.full.save).
            metrics["files"] = full.save(built.peft_model, prep.tokenizer, adapter_dir)
        else:
            built.peft_model.save_pretrained(adapter_dir, safe_serialization=True)
        (adapter_dir / "README.md").write_text(modelcard.render(cfg, metrics, examples))
        training = {"hyperparameters": dict(cfg.hp), "metrics": metrics, "base_model": cfg.base_model,
                    "method": cfg.method}
        (adapter_dir / "pedigree_training.json").write_text(json.dumps(training, indent=2, sort_keys=True) + "\n")
    if rt.dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    rt.emit(_event("log", f"training finished in {metrics['wall_s']:.1f}s; adapter at {adapter_dir}"))
    return {"metrics": metrics, "examples": examples, "adapter_dir": str(adapter_dir)}


def train(
    spec: Mapping[str, Any],
    records: Iterable[dict],
    out_dir: Path,
    on_event: EventSink = lambda e: None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    t_start = time.time()
    cfg = RunConfig.from_spec(spec)
    rt = Runtime(cfg.hp, on_event, should_stop)
    prep = prepare(cfg, rt, records)
    built = build(cfg, rt, prep)
    fitted = fit(cfg, rt, prep, built)
    return finish(cfg, rt, prep, built, fitted, Path(out_dir), t_start)
