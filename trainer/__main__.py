"""`python -m trainer make-tiny PATH`, `python -m trainer train --spec --data --out [--events]` and
`python -m trainer evaluate --spec --out [--events]`.

The service runs these as subprocesses (embedded mode, and the Celery worker under torchrun), so a
failure is always reported the same way: a non-zero exit and DIR/result.json {"error": {...}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path


def _make_tiny(args) -> int:
    from trainer.tiny import make_tiny

    t0 = time.time()
    path = make_tiny(args.path, hidden_size=args.hidden, layers=args.layers, heads=args.heads, seed=args.seed)
    print(json.dumps({"path": str(path), "seconds": round(time.time() - t0, 2)}))
    return 0


def _child(args, body) -> int:
    """Run `body(on_event, should_stop)` as a supervised child: events to --events, the stop file and
    the parent watch honoured, and OUT/result.json written atomically whatever happens."""
    import os

    from trainer.errors import TrainError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as stack:
        events = (
            stack.enter_context(open(args.events, "a", buffering=1)) if args.events and main_rank else None
        )

        def on_event(e: dict) -> None:
            line = json.dumps({**e, "at": time.time()}, default=str)
            if events:
                events.write(line + "\n")
            if not args.quiet:
                print(line, file=sys.stderr, flush=True)

        stop_file = Path(args.stop_file) if args.stop_file else None
        parent = os.getppid()

        def should_stop() -> bool:
            if stop_file and stop_file.exists():
                return True
            # Reparented: whoever launched us (the worker, or torchrun's agent) is gone and nobody
            # will read what we produce; stop rather than hold the GPU from the next run.
            return args.exit_with_parent and os.getppid() != parent

        try:
            result = body(on_event, should_stop)
            code = 0
        except TrainError as exc:
            result, code = {"error": exc.as_dict()}, 2
        except Exception as exc:  # noqa: BLE001 - the caller needs a result.json whatever happened
            result, code = {"error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}, 1
        if main_rank:
            tmp = out / "result.json.tmp"
            tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
            tmp.replace(out / "result.json")  # a reader never sees half a file
    try:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()
    except ImportError:
        pass
    return code


def _train(args) -> int:
    def body(on_event, should_stop):
        from trainer.data import read_jsonl
        from trainer.run import train

        spec = json.loads(Path(args.spec).read_text())
        with open(args.data, "rb") as f:
            records = list(read_jsonl(f))
        return train(spec, records, Path(args.out), on_event, should_stop=should_stop)

    return _child(args, body)


def _evaluate(args) -> int:
    def body(on_event, should_stop):
        from trainer.errors import TrainError
        from trainer.evaluate import evaluate

        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainError("invalid_params", f"--spec {args.spec}: {exc}") from exc
        if not isinstance(spec, dict):
            raise TrainError("invalid_params", "--spec: must hold a JSON object")
        # Relative file paths in the spec are relative to the spec's folder (the worker's temp dir).
        return evaluate(spec, Path(args.out), on_event, should_stop=should_stop,
                        base_dir=Path(args.spec).resolve().parent)

    return _child(args, body)


def _child_args(r) -> None:
    r.add_argument("--out", required=True, help="output folder (result.json; adapter/ for train)")
    r.add_argument("--events", help="append events here as JSON lines")
    r.add_argument("--stop-file", help="stop with code 'cancelled' once this file exists")
    r.add_argument("--quiet", action="store_true", help="do not echo events on stderr")
    r.add_argument(
        "--exit-with-parent", action="store_true", help="stop (code cancelled) if the parent process dies"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer", description="Pedigree LoRA/QLoRA trainer")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("make-tiny", help="write a tiny random-weight Llama-style model + byte tokenizer")
    t.add_argument("path")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("train", help="train an adapter on a pedigree JSONL export")
    r.add_argument("--spec", required=True, help="JSON: base_model, method, hyperparameters, ...")
    r.add_argument("--data", required=True, help="pedigree JSONL export")
    _child_args(r)
    e = sub.add_parser("evaluate", help="evaluate an adapter (suites heldout, memorization, pii_extraction, membership)")
    e.add_argument("--spec", required=True, help="JSON: evaluation_id, suites, base_model, adapter_dir, files, ...")
    _child_args(e)
    args = p.parse_args(argv)
    return {"make-tiny": _make_tiny, "train": _train, "evaluate": _evaluate}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
