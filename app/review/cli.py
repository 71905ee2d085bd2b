"""`pedigree review ...`: review progress, per-reviewer figures and agreement for a dataset, on the
configured database (operators on the database host; reviewers decide through the page or the API,
with their own keys, so four eyes and the audit trail name a person)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli_support import prepare_db

app = typer.Typer(help="Review progress and agreement.", no_args_is_help=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if v % 1 else f"{v:.0f}"
    return str(v)


@app.command("stats")
def stats(dataset: Annotated[str, typer.Argument(help="dataset id or name")],
          as_json: Annotated[bool, typer.Option("--json", help="the API's JSON (GET /v1/review/stats)")] = False) -> None:
    """Pending / approved / rejected, throughput, median time to decision, and inter-reviewer
    agreement, for the dataset and per reviewer."""
    from app.core.db import session_scope
    from app.core.errors import PedigreeError
    from app.datasets import service as datasets
    from app.review import stats as review_stats

    # Made per call, not at import: the width is read from the terminal (or COLUMNS) when it prints.
    out, err = Console(), Console(stderr=True)
    prepare_db()
    try:
        with session_scope() as s:
            st = review_stats.stats(s, dataset=datasets.get(s, dataset))
    except PedigreeError as e:
        err.print(f"[red]{e.message}")
        raise typer.Exit(4 if e.status_code == 404 else 1) from None
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    d, a = st["dataset"], st["agreement"]
    out.print(f"[bold]{d['name']}[/]  pending {d['pending']}  approved {d['approved']}  rejected {d['rejected']}  "
              f"changes requested {d['changes_requested']}  escalated {d['escalated']}  in pipeline {d['in_pipeline']}")
    out.print(f"decisions {d['decisions']} (last hour {d['decisions_last_hour']}, last day {d['decisions_last_day']}); "
              f"median to decision {_fmt(d['median_seconds_to_decision'])} s, "
              f"median handling {_fmt(d['median_handling_seconds'])} s")
    out.print("agreement: " + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in a.items()
                                        if not isinstance(v, list | dict)))
    table = Table("reviewer", "decisions", "approve", "reject", "request_changes", "last hour",
                  "median to decision (s)", "median handling (s)", "agreement with others")
    for r in st["reviewers"]:
        table.add_row(r["reviewer"], str(r["decisions"]), str(r["approve"]), str(r["reject"]),
                      str(r["request_changes"]), str(r["decisions_last_hour"]), _fmt(r["median_seconds_to_decision"]),
                      _fmt(r["median_handling_seconds"]), _fmt(r["agreement_with_others"]))
    out.print(table)
    if a["cohen_kappa_pairs"]:
        pairs = Table("reviewer", "reviewer", "shared items", "Cohen's kappa", "percent agreement")
        for p in a["cohen_kappa_pairs"]:
            pairs.add_row(p["a"], p["b"], str(p["items"]), _fmt(p["kappa"]), _fmt(p["percent_agreement"]))
        out.print(pairs)
    pw = st.get("pairwise")
    if pw:
        pa = pw["agreement"]
        out.print(f"[bold]pairwise[/]  {pw['judgments']} picks on {pw['items']} pairs; preferred "
                  + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in pw["preferred"].items())
                  + "; verdicts " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in pw["verdicts"].items()) or "none"))
        out.print(f"pairwise agreement (chosen / rejected / tie / both bad): percent {_fmt(pa['percent_agreement'])}, "
                  f"Krippendorff's alpha {_fmt(pa['krippendorff_alpha'])}")
        bias = Table("reviewer", "picks", "A", "B", "tie", "both bad", "left share (position bias)",
                     "agreement with others")
        for r in pw["reviewers"]:
            p = r["picks"]
            bias.add_row(r["reviewer"], str(r["judgments"]), str(p["a"]), str(p["b"]), str(p["tie"]),
                         str(p["both_bad"]), _fmt(r["left_share"]), _fmt(r["agreement_with_others"]))
        out.print(bias)
