"""`pedigree lineage ...`: the lineage answers as readable trees (or the API's JSON with --json)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.tree import Tree

from app.cli_support import cli_actor, prepare_db

app = typer.Typer(help="Lineage: where an example went, what a model was made of.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _run(fn, *args: Any, **kw: Any) -> dict[str, Any]:
    from app.core.db import session_scope
    from app.core.errors import PedigreeError

    prepare_db()
    try:
        with session_scope() as s:
            return fn(s, *args, **kw)
    except PedigreeError as e:
        err.print(f"[red]{e.message}")
        raise typer.Exit(1 if e.status_code != 404 else 4) from None


def _short(h: str | None) -> str:
    return (h or "")[:12]


def example_tree(d: dict[str, Any]) -> Tree:
    ex, prov = d["example"], d["example"]["provenance"]
    status = f"[bold red]{ex['status']}[/]" if ex["status"] == "erased" else f"[bold]{ex['status']}[/]"
    root = Tree(f"example [cyan]{ex['id']}[/] ({status}) dataset {ex['dataset_id']}")
    p = root.add("[bold]provenance")
    p.add(f"source {prov['source']} ref {prov['source_ref']}  license {prov['license']}  "
          f"legal basis {prov['legal_basis']}")
    p.add(f"collected {prov['collected_at']}  ingested {prov['ingested_at']} by {prov['ingested_by']}  "
          f"batch {prov['ingest_batch_id']}")
    if prov.get("tags"):
        p.add(f"tags {', '.join(prov['tags'])}")
    revs = root.add(f"[bold]revisions[/] ({len(d['revisions'])})")
    for r in d["revisions"]:
        flags = "".join([" [green]current[/]" if r["current"] else "", " [red]erased[/]" if r["erased"] else "",
                         " vaulted" if r.get("vaulted") and not r["erased"] else ""])
        revs.add(f"#{r['seq']} {r['reason']} by {r['author']} at {r['created_at']}  sha256 {_short(r['content_sha256'])}"
                 f"{flags}")
    if d["pii_findings"]:
        f = root.add(f"[bold]PII findings[/] ({len(d['pii_findings'])})")
        for x in d["pii_findings"]:
            f.add(f"{x['entity_type']} at {x['field_path']}[{x['start']}:{x['end']}] -> {x['operator']} "
                  f"(score {x['score']:.2f}, {x['recognizer']})  verdict {x['verdict'] or '-'}"
                  + (f" by {x['verdict_by']}" if x["verdict_by"] else ""))
    if d["quality_flags"]:
        root.add(f"[bold]quality flags[/] {', '.join(map(str, d['quality_flags']))}")
    if d["duplicates"]:
        dup = root.add(f"[bold]duplicates[/] ({len(d['duplicates'])})")
        for x in d["duplicates"]:
            dup.add(f"{x['relation']} {x['example_id']} ({x['method']}, similarity {x['similarity']:.2f})")
    rv = root.add(f"[bold]reviews[/] ({len(d['reviews'])})")
    for x in d["reviews"]:
        rv.add(f"{x['decision']} by {x['reviewer']} at {x['at']}"
               + (f" ({x['reason_code']})" if x["reason_code"] else "") + f" on revision {_short(x['revision_id'])}")
    sn = root.add(f"[bold]snapshots[/] ({len(d['snapshots'])})")
    for x in d["snapshots"]:
        sn.add(f"{x['name']} {x['id']}  manifest {_short(x['manifest_sha256'])}  split {x['split']}"
               + ("  [red]contains erased[/]" if x["contains_erased"] else ""))
    mv = root.add(f"[bold]model versions[/] ({len(d['model_versions'])})")
    for x in d["model_versions"]:
        st = f"[bold red]{x['status']}[/]" if x["status"] == "tainted" else x["status"]
        node = mv.add(f"{x['name']} v{x['version']} ({st})  run {x['run_id']}  {x['tokens']} tokens, "
                      f"{x['epochs']} epoch(s)" + (f"  aliases {', '.join(x['aliases'])}" if x["aliases"] else ""))
        if x.get("warning"):
            node.add(f"[bold red]{x['warning']}")
    if d["erasure"]:
        e = d["erasure"]
        root.add(f"[bold red]erased[/] by request {e['request_id']} at {e['erased_at']} ({e['reason']})")
    for a in d.get("audit_events", []):
        root.add(f"audit #{a['seq']} {a['action']} by {a['actor']} at {a['at']}"
                 + ("" if a["hash_ok"] else "  [bold red]HASH MISMATCH[/]"))
    return root


@app.command("example")
def example(example_id: str, as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
            audit: Annotated[bool, typer.Option(help="include the audit events behind the answer")] = False) -> None:
    """Everything known about one example, as a tree."""
    from app.lineage import service

    # Reading lineage changes nothing, so the shell user gets the auditor's view (the one role that reads
    # everything here); the tree prints hashes, --json carries what the API would give an auditor.
    d = _run(service.example_lineage, example_id=example_id, actor=cli_actor("auditor"), include_audit=audit)
    if as_json:
        print(json.dumps(d, default=str))
        return
    out.print(example_tree(d))


@app.command("model")
def model(name: str, version: int,
          as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False) -> None:
    """A model version: its run, snapshot and what its examples were made of."""
    from app.lineage import service

    d = _run(service.model_lineage, name=name, version=version)
    if as_json:
        print(json.dumps(d, default=str))
        return
    m, run, snap, summ = d["model_version"], d["run"], d["snapshot"], d["summary"]
    root = Tree(f"model [cyan]{m['name']} v{m['version']}[/] ({m['status']})"
                + (f" aliases {', '.join(m['aliases'])}" if m["aliases"] else ""))
    if run:
        root.add(f"run {run['id']} {run['status']}  {run['method']} on {run['base_model']}  "
                 f"hyperparameters {json.dumps(run['hyperparameters'])}")
    if snap:
        root.add(f"snapshot {snap['name']} {snap['id']}  manifest {snap['manifest_sha256']}"
                 + ("  [red]contains erased[/]" if snap["contains_erased"] else ""))
    s = root.add(f"{summ['examples']} examples, {summ['tokens']} tokens")
    for key in ("by_source", "by_license", "by_legal_basis", "by_reviewer", "by_pii_operator", "by_comparison"):
        if summ.get(key):
            s.add(f"{key.removeprefix('by_').replace('_', ' ')}: {json.dumps(summ[key])}")
    for w in d["warnings"]:
        root.add(f"[bold red]{w}")
    out.print(root)
