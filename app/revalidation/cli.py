"""`pedigree revalidation ...`: compare the records with this process's engine and queue what is due, start
one, and follow its progress, on the configured database (the API's routes do the same over HTTP)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from app.cli_support import cli_actor, prepare_db
from app.core.errors import PedigreeError

app = typer.Typer(help="Revalidation after an engine, recognizer or policy change.", no_args_is_help=True)


def _print(view: dict) -> None:
    typer.echo(json.dumps(view, indent=2, sort_keys=True))


def _refuse(exc: Exception) -> None:
    typer.echo(f"pedigree revalidation: {exc}", err=True)
    raise typer.Exit(1)


@app.command("check")
def check(dataset: Annotated[str | None, typer.Argument(help="dataset id or name (default: every dataset)")] = None
          ) -> None:
    """Compare validation records with this process's PII engine, spaCy model, recognizer set and the dedup
    policy; queue a revalidation where one is due. Prints the ids queued."""
    from app.core.db import session_scope
    from app.datasets import service as datasets
    from app.revalidation import jobs

    prepare_db()
    ds_id = None
    if dataset:
        try:
            with session_scope() as s:
                ds_id = str(datasets.get(s, dataset).id)
        except PedigreeError as exc:
            _refuse(exc)
    typer.echo(json.dumps({"queued": jobs.check(ds_id)}))


@app.command("start")
def start(dataset: Annotated[str, typer.Argument(help="dataset id or name")],
          scope: Annotated[str, typer.Option(help="changed (records that differ) or all")] = "changed") -> None:
    """Queue a revalidation of the dataset (it supersedes a running one) and print it."""
    from app.core.db import session_scope
    from app.revalidation import service

    if scope not in ("changed", "all"):
        raise typer.BadParameter("scope: changed or all")
    prepare_db()
    try:
        with session_scope() as s:
            rid = str(service.request_api(s, dataset_ref=dataset, actor=cli_actor(), triggers=None, scope=scope).id)
    except PedigreeError as exc:
        _refuse(exc)
    with session_scope() as s:
        _print(service.view(service.get(s, rid)))


@app.command("status")
def status(revalidation: Annotated[str, typer.Argument(help="revalidation id")],
           follow: Annotated[bool, typer.Option("--follow", help="poll until it is no longer running")] = False
           ) -> None:
    """A revalidation's progress (GET /v1/revalidations/{id})."""
    from app.core.db import session_scope
    from app.revalidation import service

    prepare_db()
    while True:
        try:
            with session_scope() as s:
                view = service.view(service.get(s, revalidation))
        except PedigreeError as exc:
            _refuse(exc)
        if not follow or view["status"] not in service.ACTIVE:
            _print(view)
            return
        typer.echo(f"{view['status']} {view['phase']}: {view['done']}/{view['total']} "
                   f"(changed {view['changed']}, unchanged {view['unchanged']})", err=True)
        time.sleep(2)
