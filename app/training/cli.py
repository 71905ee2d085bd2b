"""`pedigree runs ...`: look at training runs and run the reaper by hand, on the configured database
(operators on the database host; everything else goes through the HTTP API)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli_support import prepare_db

app = typer.Typer(help="Training runs.", no_args_is_help=True)
err = Console(stderr=True)


@app.command("list")
def list_runs(status: Annotated[str | None, typer.Option()] = None,
              model: Annotated[str | None, typer.Option()] = None, limit: int = 20) -> None:
    """Newest runs first."""
    from app.core.db import session_scope
    from app.training import service

    prepare_db()
    table = Table("id", "status", "model", "version", "error", "created")
    with session_scope() as s:
        rows, _ = service.list_page(s, status=status, snapshot_id=None, model_name=model, cursor=None, limit=limit)
        mvs = service.versions_for(s, rows)
        for r in rows:
            mv = mvs.get(r.id)
            table.add_row(str(r.id), r.status, r.model_name, str(mv.version) if mv else "",
                          r.error_code or "", r.created_at.isoformat(timespec="seconds"))
    Console().print(table)


@app.command("show")
def show(run_id: str) -> None:
    """One run as JSON (the API's shape)."""
    from app.core.db import session_scope
    from app.core.errors import PedigreeError
    from app.training import router, service

    prepare_db()
    try:
        with session_scope() as s:
            print(json.dumps(router.run_out(s, service.get(s, run_id)), indent=2, default=str))
    except PedigreeError as e:
        # Same exit codes as `pedigree lineage`: 4 for not found, 1 otherwise; a message, not a traceback.
        err.print(f"[red]{e.message}")
        raise typer.Exit(1 if e.status_code != 404 else 4) from None


@app.command("reap")
def reap(stale_after: Annotated[float | None, typer.Option(help="seconds without a heartbeat")] = None) -> None:
    """Fail running runs whose heartbeats stopped (what the beat task does every 30 s)."""
    from app.core.db import session_scope
    from app.lineage import openlineage  # a reaped run is an OpenLineage FAIL, sent by its audit subscriber
    from app.training.reaper import reap as reap_runs

    prepare_db()
    with session_scope() as s:
        ids = reap_runs(s, stale_after_s=stale_after)
    if ids:
        openlineage.flush()
    err.print(f"reaped {len(ids)} run(s)")
    for i in ids:
        print(i)
