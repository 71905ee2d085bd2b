"""`pedigree` command line. Commands act on the configured database directly (the same services the
API uses); `ingest --api-url` streams to a remote server instead."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli_support import cli_actor, prepare_db
from app.lineage.cli import app as lineage_app
from app.revalidation.cli import app as revalidation_app
from app.review.cli import app as review_app
from app.snapshots.cli import app as snapshot_app
from app.training.cli import app as runs_app

app = typer.Typer(help="Pedigree: governed training-data curation for LLM fine-tuning.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit log.", no_args_is_help=True)
models_app = typer.Typer(help="Base models.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")
app.add_typer(audit_app, name="audit")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(review_app, name="review")
app.add_typer(runs_app, name="runs")
app.add_typer(lineage_app, name="lineage")
app.add_typer(revalidation_app, name="revalidation")

err = Console(stderr=True)
out = Console()


@app.callback()
def _wire() -> None:
    # Runs before every command: the CLI is an entry point like the API and the worker.
    from app.wiring import wire

    wire()


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, reload: bool = False) -> None:
    """Run the API (embedded default when nothing is configured)."""
    import uvicorn

    prepare_db()
    uvicorn.run("app.main:app", host=host, port=port, workers=workers, reload=reload, log_level="info")


@app.command()
def worker(
    queues: str = "default,pii,dedup",
    concurrency: Annotated[int | None, typer.Option(help="processes (default: cores)")] = None,
    beat: Annotated[bool, typer.Option(help="also run the periodic sweeper")] = False,
) -> None:
    """A Celery worker for the CPU queues (needs PEDIGREE_REDIS_URL)."""
    from app.core.config import get_settings

    if get_settings().redis_url is None:
        err.print("[red]PEDIGREE_REDIS_URL is not set: in the embedded mode tasks run in-process; no worker needed.")
        raise typer.Exit(2)
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "--loglevel", "INFO"]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    if beat:
        cmd.append("-B")
    os.execv(sys.executable, cmd)


@keys_app.command("create")
def keys_create(role: Annotated[str, typer.Option()], name: Annotated[str, typer.Option()] = "",
                machine: Annotated[bool, typer.Option(help="a machine key (cannot count as a human reviewer)")] = False) -> None:
    """Create an API key; the key is printed alone on the last line of stdout, once."""
    from app.audit import service as audit
    from app.core import auth
    from app.core.db import session_scope

    prepare_db()
    actor = cli_actor()
    with session_scope() as s:
        row, key = auth.create_key(s, name=name or f"{role}-{getpass.getuser()}", role=role, created_by=actor.ref,
                                   is_human=not machine)
        audit.record(s, actor=actor.ref, action="api_key.created", entity_type="api_key", entity_id=row.id,
                     payload={"name": row.name, "role": role, "prefix": row.prefix})
    err.print(f"created {role} key {row.name!r} (id {row.id}); store it now, it is not shown again")
    print(key)


@datasets_app.command("create")
def datasets_create(name: str, format: Annotated[str, typer.Option("--format")] = "instruction",
                    description: str = "", eval_set: bool = False) -> None:
    """Create a dataset."""
    from pydantic import ValidationError

    from app.core.db import session_scope
    from app.core.errors import PedigreeError
    from app.datasets import service
    from app.datasets.schemas import DatasetCreate

    prepare_db()
    try:
        data = DatasetCreate(name=name, format=format, description=description, is_eval_set=eval_set)
        with session_scope() as s:
            ds = service.create(s, data=data, actor=cli_actor())
    except ValidationError as e:
        err.print(f"[red]invalid: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    except PedigreeError as e:
        err.print(f"[red]{e.message}")
        raise typer.Exit(1) from None
    print(json.dumps({"id": str(ds.id), "name": ds.name, "format": ds.format}))


@datasets_app.command("list")
def datasets_list() -> None:
    from app.core.db import session_scope
    from app.datasets import service

    prepare_db()
    with session_scope() as s:
        for ds in service.list_all(s):
            print(json.dumps({"id": str(ds.id), "name": ds.name, "format": ds.format, "counts": service.counts(s, ds.id)}))


def _iter_lines(path: Path, mapping: dict[str, str]):
    """Yield (line_no, raw bytes) from JSONL, or from a JSON array (one element per 'line')."""
    import orjson

    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"["):
        items = orjson.loads(path.read_bytes())
        for i, obj in enumerate(items, 1):
            yield i, orjson.dumps(_remap(obj, mapping))
        return
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            if mapping:
                try:
                    raw = orjson.dumps(_remap(orjson.loads(raw), mapping))
                except orjson.JSONDecodeError:
                    pass  # left as is: the validator reports it with its line number
            yield i, raw


def _remap(obj: Any, mapping: dict[str, str]) -> Any:
    if not mapping or not isinstance(obj, dict):
        return obj
    return {mapping.get(k, k): v for k, v in obj.items()}


@app.command()
def ingest(
    file: Path,
    dataset: Annotated[str, typer.Option(help="dataset name or id")],
    source: str | None = None,
    license: str | None = None,
    legal_basis: str | None = None,
    map: Annotated[list[str], typer.Option("--map", help="rename a field, e.g. --map response=output")] = [],  # noqa: B006
    api_url: Annotated[str | None, typer.Option(envvar="PEDIGREE_API_URL_FOR_CLI")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="PEDIGREE_API_KEY")] = None,
) -> None:
    """Ingest a JSONL (or JSON array) file into a dataset, with a progress bar and a summary."""
    from app.core.config import get_settings
    from app.core.errors import PedigreeError
    from app.examples.importer import StreamedImport
    from app.examples.parsing import Defaults

    if not file.exists():
        err.print(f"[red]{file}: no such file")
        raise typer.Exit(2)
    mapping = dict(m.split("=", 1) for m in map)
    if api_url:
        _ingest_http(file, dataset, api_url, api_key, source, license, legal_basis, mapping)
        return
    prepare_db()
    imp = StreamedImport(dataset_ref=dataset, actor=cli_actor(), channel="cli",
                         defaults=Defaults(source=source or f"file:{file.name}", license=license,
                                           legal_basis=legal_basis))
    try:
        batch_id = imp.open()
    except PedigreeError as e:
        err.print(f"[red]{e.message}")
        raise typer.Exit(1) from None
    size = get_settings().ingest_batch_size
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} lines"),
                  TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task(f"ingest {file.name}", total=None)
        pending: list[tuple[int, bytes]] = []

        def flush() -> None:
            # Same as the HTTP import: each batch commits with the batch row's counts, so a killed CLI
            # leaves a batch that the sweeper marks interrupted with exactly what was stored.
            imp.write(*imp.validate(pending), last_line=pending[-1][0])
            progress.advance(task, len(pending))
            pending.clear()

        for n, raw in _iter_lines(file, mapping):
            pending.append((n, raw))
            if len(pending) >= size:
                flush()
        if pending:
            flush()
    imp.finish(imp.progress.lines_committed)
    _summary({"batch_id": str(batch_id), **imp.progress.totals(), "errors": [e.to_dict() for e in imp.progress.errors]})


def _summary(result: dict[str, Any]) -> None:
    errs = result.get("errors", [])
    err.print(f"accepted {result['accepted']:,}  unchanged {result.get('unchanged', 0):,}  "
              f"exact duplicates {result.get('exact_duplicates', 0):,}  rejected {result['rejected']:,}")
    for e in errs[:20]:
        field = f" {e['field']}" if e.get("field") else ""
        err.print(f"  line {e['line']}: {e['code']}{field}: {e['message']}")
    if len(errs) > 20:
        err.print(f"  … and {len(errs) - 20} more (GET /v1/ingest-batches/{result['batch_id']})")
    print(json.dumps({k: v for k, v in result.items() if k != "errors"}))


def _ingest_http(file: Path, dataset: str, api_url: str, api_key: str | None, source: str | None,
                 license: str | None, legal_basis: str | None, mapping: dict[str, str]) -> None:
    from pedigree.client import ApiError, Client

    if not api_key:
        err.print("[red]--api-key (or PEDIGREE_API_KEY) is required with --api-url")
        raise typer.Exit(2)

    class _Lines:  # starts over on each iteration, so the SDK may resend it after a 503
        def __iter__(self):
            return (raw for _, raw in _iter_lines(file, mapping))

    with Client(api_url, api_key, timeout=None) as client:
        try:
            result = client.import_examples(dataset, _Lines(), source_name=source or f"file:{file.name}",
                                            license=license, legal_basis=legal_basis).model_dump(mode="json")
        except ApiError as e:
            if "accepted" not in e.body:  # an import refused as a whole still reports its lines
                err.print(f"[red]{e.status}: {e.message}")
                raise typer.Exit(1) from None
            result = e.body
    _summary(result)


@audit_app.command("verify")
def audit_verify(
    full: Annotated[bool, typer.Option(help="re-hash every event, ignoring the checkpoint")] = False,
) -> None:
    """Walk the hash chain; exit 1 and name the first bad event if it is broken."""
    from app.audit import service
    from app.core.db import session_scope

    prepare_db()
    with session_scope() as s:
        result = service.verify(s, full=full)
    print(json.dumps(result.to_dict()))
    if not result.ok:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to the configured database."""
    from app.core.migrate import upgrade_head

    upgrade_head()
    err.print("schema at head")


@models_app.command("make-tiny")
def make_tiny(path: Path) -> None:
    """Write a tiny random-weight causal LM + tokenizer usable as base_model (needs the [train] extra)."""
    # A subprocess, not an import: the API package never loads torch.
    rc = subprocess.call([sys.executable, "-m", "trainer", "make-tiny", str(path)])
    raise typer.Exit(rc)


@app.command()
def demo(workdir: Path = Path("var/demo"), keep: bool = False) -> None:
    """The whole pipeline on the embedded default (SQLite, in-process tasks, a tiny model on the CPU)."""
    from app.embedded_demo import run_demo

    raise typer.Exit(run_demo(workdir=workdir, keep=keep))


@app.command()
def openapi(
    out: Annotated[Path | None, typer.Option(help="where to write it (default: docs/openapi.json)")] = None,
    check: Annotated[bool, typer.Option(help="exit 1 if the file differs from the app's document")] = False,
) -> None:
    """Write the API's OpenAPI document (the committed docs/openapi.json is this command's output)."""
    from app.core.openapi import DOC_PATH, render
    from app.main import create_app

    path = out or DOC_PATH
    text = render(create_app().openapi())
    if check:
        if not path.exists() or path.read_text() != text:
            err.print(f"[red]{path} differs from the served document; run: pedigree openapi")
            raise typer.Exit(1)
        return
    path.write_text(text)
    err.print(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
