"""train(): a verified snapshot export in, a PEFT adapter, metrics and per-example token counts out."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from trainer import hparams
from trainer.errors import TrainError
from trainer.model import attach_lora, load_base

EventSink = Callable[[dict], None]

# Compiling the decoder layers takes about a minute and gains ~1.5x on small models (bench/results):
# worth it from a few minutes of training on.
COMPILE_AUTO_TOKENS = 20_000_000


def _event(
    kind: str, message: str, *, level: str = "info", step: int | None = None, data: dict | None = None
):
    return {"kind": kind, "level": level, "message": message, "step": step, "data": data or {}}


def _micro_batches(rows, examples, hp, pad_id, dist):
    """This rank's micro-batches of one step's rows."""
    from trainer.packing import build_micro_batch

    mine = rows[dist.rank :: dist.world]
    per = max(1, hp["micro_batch_tokens"] // hp["max_seq_len"])
    return [
        build_micro_batch(mine[i : i + per], examples, hp["max_seq_len"], pad_id)
        for i in range(0, len(mine), per)
    ]


def _all_sum(values: list[float], dist, device) -> list[float]:
    if dist.world <= 1:
        return values
    import torch
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def train(
    spec: dict,
    records: Iterable[dict],
    out_dir: Path,
    on_event: EventSink = lambda e: None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    import torch

    from trainer import attention, modelcard, packing
    from trainer.data import Renderer, verify_records
    from trainer.engine import Engine, dist_from_env, lr_lambda, make_optimizer
    from trainer.loader import Prefetcher

    t_start = time.time()
    out_dir = Path(out_dir)
    dist = dist_from_env()
    emit = on_event if dist.main else (lambda e: None)
    hp = hparams.resolve(spec.get("hyperparameters"))
    method = spec.get("method", "lora")
    if method not in ("lora", "qlora"):
        raise TrainError("invalid_hyperparameters", f"method: must be lora or qlora, got {method!r}")

    def check_stop(step: int | None = None):
        stop = should_stop is not None and should_stop()
        if dist.world > 1:
            # Ranks must agree, or one would leave while the others wait in an all-reduce. Agreeing
            # costs a synchronisation, so ranks vote only where the loop synchronises anyway.
            if step is not None and step % hp["log_every"]:
                return
            stop = _all_sum([float(stop)], dist, device)[0] > 0
        if stop:
            raise TrainError("cancelled", "the run was cancelled")

    records, manifest = verify_records(records, spec.get("expected_manifest_sha256"))
    emit(_event("log", f"export verified: {len(records)} records, manifest {manifest}"))

    seed = hp["seed"]
    random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    on_gpu = device.type == "cuda"
    # bf16 weights with autocast on the GPU; fp32 on the CPU, where bf16 matmuls are slow and the
    # tests want tight tolerances.
    dtype = torch.bfloat16 if on_gpu else torch.float32
    tokenizer, model = load_base(spec, device, dtype)
    emit(
        _event(
            "log", f"loaded {spec['base_model']} ({sum(p.numel() for p in model.parameters()):,} parameters)"
        )
    )
    check_stop()

    renderer = Renderer(tokenizer, hp["max_seq_len"])
    train_ex, val_ex = [], []
    for i, rec in enumerate(records):
        ex = renderer.tokenize(i, rec)
        (train_ex if rec["split"] == "train" else val_ex).append(ex)
    if not train_ex:
        raise TrainError("invalid_data", "the snapshot has no train examples")
    truncated = sum(e.truncated for e in train_ex + val_ex)
    if truncated:
        emit(
            _event("log", f"{truncated} examples truncated to max_seq_len {hp['max_seq_len']}", level="warn")
        )
    # Examples with nothing to learn from still count as seen, but contribute no loss.
    no_targets = sum(1 for e in train_ex if e.supervised == 0)
    if no_targets:
        emit(_event("log", f"{no_targets} train examples have no supervised tokens", level="warn"))

    torch.manual_seed(seed)
    peft_model = attach_lora(model, hp)
    if hp["gradient_checkpointing"]:
        peft_model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    backend = hp["attention"] if hp["attention"] != "auto" else attention.default_backend(device)
    if backend in ("pedigree_varlen", "pedigree_flex") and not on_gpu:
        # varlen_attn is CUDA-only and flex_attention has no CPU backward.
        raise TrainError("invalid_hyperparameters", f"hyperparameters.attention: {backend} needs a CUDA GPU")
    compile_layers = hp["compile"]
    if compile_layers == "auto":
        train_tokens = sum(len(e.input_ids) for e in train_ex) * hp["epochs"]
        compile_layers = on_gpu and train_tokens >= COMPILE_AUTO_TOKENS
    engine = Engine(
        peft_model,
        backend=backend,
        device=device,
        autocast_dtype=torch.bfloat16 if on_gpu else None,
        loss_chunk=hp["loss_chunk"],
        dist=dist,
        compile=compile_layers,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    train_plan = packing.plan(train_ex, hp["max_seq_len"])
    val_plan = packing.plan(val_ex, hp["max_seq_len"]) if val_ex else None
    rows_per_step = max(1, hp["batch_tokens"] // hp["max_seq_len"], dist.world)
    steps_per_epoch = math.ceil(len(train_plan.rows) / rows_per_step)
    total_steps = steps_per_epoch * hp["epochs"]
    if hp["max_steps"]:
        total_steps = min(total_steps, hp["max_steps"])
    emit(
        _event(
            "log",
            f"{len(train_ex)} train / {len(val_ex)} validation examples; {len(train_plan.rows)} rows of "
            f"{hp['max_seq_len']} tokens, packing efficiency {train_plan.efficiency:.3f}; "
            f"{total_steps} steps; attention {backend}; compiled {bool(compile_layers)}; {dist.world} rank(s)",
        )
    )

    def validate() -> float | None:
        if val_plan is None:
            return None
        peft_model.eval()
        mbs = _micro_batches(val_plan.rows, val_ex, hp, pad_id, dist)
        s, n = engine.eval_losses(mb.to(device) for mb in mbs)
        s, n = _all_sum([s, float(n)], dist, device)
        peft_model.train()
        return s / n if n else None

    try:
        val_before = validate()
        if val_before is not None:
            emit(
                _event(
                    "metrics",
                    f"validation loss before training {val_before:.4f}",
                    step=0,
                    data={"val_loss": val_before},
                )
            )
        optimizer = make_optimizer(
            engine.params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"], device=device
        )
        warmup = int(hp["warmup_ratio"] * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(hp["lr_scheduler"], total_steps, warmup)
        )
        sup_of = [e.supervised for e in train_ex]
        len_of = [len(e.input_ids) for e in train_ex]
        seen_tokens = [0] * len(train_ex)
        seen_epochs = [0] * len(train_ex)
        step = 0
        real_total = sup_total = 0
        train_time = 0.0
        data: dict = {}
        window = {"loss": 0.0, "sup": 0, "real": 0, "t": 0.0}
        last_beat = time.time()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        peft_model.train()
        schedule = []
        for epoch in range(hp["epochs"]):
            order = list(range(len(train_plan.rows)))
            # Row order changes per epoch; which examples share a row does not (packing is by length).
            random.Random(seed * 1000003 + epoch).shuffle(order)
            for s0 in range(0, len(order), rows_per_step):
                schedule.append((epoch, [train_plan.rows[i] for i in order[s0 : s0 + rows_per_step]]))
        schedule = schedule[:total_steps]

        def build(item):
            epoch, step_rows = item
            mbs = _micro_batches(step_rows, train_ex, hp, pad_id, dist)
            return epoch, step_rows, [mb.pin() for mb in mbs] if on_gpu else mbs

        loader = Prefetcher(schedule, build, depth=2)
        loss_acc = torch.zeros((), dtype=torch.float64, device=device)
        if on_gpu:
            torch.cuda.synchronize(device)
        t_window = time.perf_counter()
        try:
            for epoch, step_rows, host_mbs in loader:
                check_stop(step)
                step_sup = sum(sup_of[i] for row in step_rows for i in row)
                mbs = [mb.to(device) for mb in host_mbs]
                loss_acc += engine.backward_step(mbs, max(1, step_sup))
                if hp["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(engine.params, hp["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_real = 0
                for row in step_rows:
                    for i in row:
                        seen_tokens[i] += len_of[i]
                        seen_epochs[i] += 1
                        step_real += len_of[i]
                window["sup"] += step_sup
                window["real"] += step_real
                real_total += step_real
                sup_total += step_sup
                # Synchronise only at log points: a per-step sync would stall the launch queue.
                if step % hp["log_every"] == 0 or step == total_steps:
                    window["loss"] = _all_sum([float(loss_acc)], dist, device)[0]
                    loss_acc.zero_()
                    now = time.perf_counter()
                    window["t"] = now - t_window
                    train_time += window["t"]
                    data = {
                        "train_loss": window["loss"] / max(1, window["sup"]),
                        "tokens_per_s": window["real"] / max(window["t"], 1e-9),
                        "supervised_tokens_per_s": window["sup"] / max(window["t"], 1e-9),
                        "learning_rate": scheduler.get_last_lr()[0],
                        "epoch": epoch + 1,
                    }
                    emit(
                        _event(
                            "metrics",
                            f"step {step}/{total_steps} loss {data['train_loss']:.4f}",
                            step=step,
                            data=data,
                        )
                    )
                    window = {"loss": 0.0, "sup": 0, "real": 0, "t": 0.0}
                    t_window = time.perf_counter()
                if time.time() - last_beat >= 10:
                    emit(_event("heartbeat", "training", step=step))
                    last_beat = time.time()
        finally:
            loader.close()
        val_after = validate()
        if val_after is not None:
            emit(
                _event(
                    "metrics",
                    f"validation loss after training {val_after:.4f}",
                    step=step,
                    data={"val_loss": val_after},
                )
            )
    except torch.OutOfMemoryError as exc:
        raise TrainError(
            "out_of_memory",
            f"CUDA out of memory (batch_tokens {hp['batch_tokens']}, micro_batch_tokens "
            f"{hp['micro_batch_tokens']}, max_seq_len {hp['max_seq_len']}): lower micro_batch_tokens or "
            f"enable gradient_checkpointing",
        ) from exc

    peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
    metrics = {
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "train_loss": data.get("train_loss"),
        "steps": step,
        "epochs": hp["epochs"],
        "train_examples": len(train_ex),
        "validation_examples": len(val_ex),
        "tokens": real_total,
        "supervised_tokens": sup_total,
        "tokens_per_s": real_total / train_time if train_time else None,
        "supervised_tokens_per_s": sup_total / train_time if train_time else None,
        "packing_efficiency": train_plan.efficiency,
        "peak_memory_bytes": peak,
        "trainable_parameters": sum(p.numel() for p in engine.params),
        "attention": backend,
        "world_size": dist.world,
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "manifest_sha256": manifest,
        "wall_s": time.time() - t_start,
    }
    examples = [
        {"revision_id": ex.revision_id, "tokens": seen_tokens[k], "epochs": seen_epochs[k]}
        for k, ex in enumerate(train_ex)
        if seen_epochs[k]
    ]
    adapter_dir = out_dir / "adapter"
    if dist.main:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(adapter_dir, safe_serialization=True)
        (adapter_dir / "README.md").write_text(modelcard.render(spec, hp, metrics, examples))
        (adapter_dir / "pedigree_training.json").write_text(
            json.dumps(
                {
                    "hyperparameters": hp,
                    "metrics": metrics,
                    "base_model": spec["base_model"],
                    "method": method,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    emit(_event("log", f"training finished in {metrics['wall_s']:.1f}s; adapter at {adapter_dir}"))
    return {"metrics": metrics, "examples": examples, "adapter_dir": str(adapter_dir)}
