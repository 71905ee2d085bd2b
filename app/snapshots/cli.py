"""`pedigree snapshot ...`: export a snapshot to local files, verified.

The export always travels as `pedigree` JSONL (the one format that carries every member's content hash),
is checked line by line and against the manifest hash, and only then converted to the format asked
for. A file that does not verify is kept under a `.unverified` name and the command exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from app.snapshots.schemas import EXPORT_FORMATS

app = typer.Typer(help="Snapshots: frozen, verifiable sets of approved examples.", no_args_is_help=True)
err = Console(stderr=True)


def _content_sha256(content: Any) -> str:
    # Deliberately the stdlib formula the trainer uses, not app.examples.formats: this check must not
    # share a bug with the code that produced the hashes.
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Verifier:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bad: list[str] = []

    def feed(self, block: bytes) -> int:
        n = 0
        for raw in block.splitlines():
            if not raw.strip():
                continue
            rec = json.loads(raw)
            if _content_sha256(rec["content"]) != rec["content_sha256"]:
                self.bad.append(rec["revision_id"])
            self.lines.append(f"{rec['content_sha256']} {rec['split']}")
            n += 1
        return n

    def manifest(self) -> str:
        self.lines.sort()
        return hashlib.sha256("\n".join(self.lines).encode("utf-8")).hexdigest()

    def merkle_root(self) -> str:
        """RFC 6962 root over the same sorted lines (call after manifest(), which sorts them)."""
        from app.snapshots import merkle

        return merkle.root_of(merkle.leaf_hash(x.encode()) for x in self.lines).hex()


def _http_source(api_url: str, api_key: str, snapshot: str, split: str) -> tuple[dict, dict, Iterator[bytes]]:
    import httpx

    client = httpx.Client(base_url=api_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=None)
    r = client.get(f"/v1/snapshots/{snapshot}/manifest.json")
    if r.status_code != 200:
        err.print(f"[red]{r.status_code}: {r.json().get('error', {}).get('message', r.text)}")
        raise typer.Exit(1)
    manifest = r.json()
    ctx = client.stream("GET", f"/v1/snapshots/{snapshot}/export", params={"format": "pedigree", "split": split})
    resp = ctx.__enter__()
    if resp.status_code != 200:
        resp.read()
        err.print(f"[red]{resp.status_code}: {resp.text[:300]}")
        raise typer.Exit(1)
    expected = {"manifest": resp.headers["X-Manifest-SHA256"], "export": resp.headers["X-Export-Manifest-SHA256"],
                "count": int(resp.headers["X-Member-Count"]), "omitted": int(resp.headers["X-Erased-Omitted"])}

    def blocks() -> Iterator[bytes]:
        pending = b""
        try:
            for chunk in resp.iter_bytes(1 << 20):
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
            if pending:
                yield pending
        finally:
            ctx.__exit__(None, None, None)
            client.close()

    return manifest, expected, blocks()


def _local_source(snapshot: str, split: str) -> tuple[dict, dict, Iterator[bytes]]:
    from app.core.db import session_scope
    from app.core.errors import PedigreeError
    from app.snapshots import export, repository

    try:
        with session_scope() as s:
            snap = repository.get(s, snapshot)
            manifest = repository.manifest_document(s, snap)
            plan = export.plan_export(s, snap, split=split)
    except PedigreeError as e:
        err.print(f"[red]{e.message}")
        raise typer.Exit(1) from None
    expected = {"manifest": plan.manifest_sha256, "export": plan.export_manifest_sha256, "count": plan.count,
                "omitted": len(plan.omitted_erased)}
    return manifest, expected, export.iter_pedigree_blocks(plan)


@app.command("export")
def export_cmd(
    snapshot: Annotated[str, typer.Argument(help="snapshot id")],
    format: Annotated[str, typer.Option("--format", help=" | ".join(EXPORT_FORMATS))] = "pedigree",
    split: Annotated[str, typer.Option(help="all | train | validation")] = "all",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("."),
    api_url: Annotated[str | None, typer.Option(envvar="PEDIGREE_API_URL_FOR_CLI",
                                                help="export over HTTP from this server (default: the configured database)")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="PEDIGREE_API_KEY")] = None,
) -> None:
    """Write a snapshot export and its manifest.json under --out, with a progress bar; verify every
    content hash and the manifest hash before writing the final file."""
    from app.snapshots import export as ex
    from app.snapshots.formats import PREFERENCE_ONLY

    if format not in EXPORT_FORMATS:
        err.print(f"[red]unknown format {format!r}; one of {', '.join(EXPORT_FORMATS)}")
        raise typer.Exit(2)
    if split not in ("all", "train", "validation"):
        err.print(f"[red]unknown split {split!r}; one of all, train, validation")
        raise typer.Exit(2)
    if api_url:
        if not api_key:
            err.print("[red]--api-key (or PEDIGREE_API_KEY) is required with --api-url")
            raise typer.Exit(2)
        manifest, expected, blocks = _http_source(api_url, api_key, snapshot, split)
    else:
        from app.cli_support import prepare_db

        prepare_db()
        manifest, expected, blocks = _local_source(snapshot, split)

    out.mkdir(parents=True, exist_ok=True)
    stem = f"{manifest['name']}.{split}"
    raw_path = out / f"{stem}.pedigree.jsonl.part"
    verifier = Verifier()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task(f"download {manifest['name']} ({split})", total=expected["count"])
        with raw_path.open("wb") as f:
            for block in blocks:
                f.write(block)
                progress.advance(task, verifier.feed(block))
    got = verifier.manifest()
    ok = not verifier.bad and got == expected["export"] and len(verifier.lines) == expected["count"]
    root = None
    if split == "all" and not expected["omitted"]:
        ok = ok and got == expected["manifest"]
        # The whole, unerased snapshot: its Merkle root must come out of the same lines too.
        if manifest.get("merkle_root"):
            root = verifier.merkle_root()
            ok = ok and root == manifest["merkle_root"]
    if not ok:
        bad = raw_path.with_name(f"{stem}.pedigree.jsonl.unverified")
        os.replace(raw_path, bad)
        err.print(f"[red]verification failed: manifest {got} (expected {expected['export']}), "
                  f"{len(verifier.lines)} records (expected {expected['count']}), "
                  f"{len(verifier.bad)} content hash mismatches, Merkle root {root} (expected "
                  f"{manifest.get('merkle_root')}); kept as {bad}")
        raise typer.Exit(1)

    if format == "pedigree":
        final = out / f"{stem}.jsonl"
        os.replace(raw_path, final)
    else:
        final = out / f"{stem}.{'parquet' if format == 'parquet' else format + '.jsonl'}"
        fmt = manifest["dataset"]["format"]
        if format in PREFERENCE_ONLY and fmt != "preference":
            raw_path.unlink()
            err.print(f"[red]the {format} export needs a preference snapshot; this one is {fmt}")
            raise typer.Exit(2)

        def reread(block_lines: int = 20_000) -> Iterator[bytes]:
            with raw_path.open("rb") as f:
                buf: list[bytes] = []
                for line in f:
                    buf.append(line)
                    if len(buf) >= block_lines:
                        yield b"".join(buf)
                        buf = []
                if buf:
                    yield b"".join(buf)

        with final.open("wb") as f:
            if format == "parquet":
                body = ex.stream_parquet(fmt, reread(), metadata={"pedigree.manifest_sha256": expected["manifest"],
                                                                  "pedigree.export_manifest_sha256": got})
            else:
                body = ex.stream_jsonl(format, fmt, reread())
            for chunk in body:
                f.write(chunk)
        raw_path.unlink()
    (out / f"{manifest['name']}.manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    note = f" ({expected['omitted']} erased member(s) omitted)" if expected["omitted"] else ""
    err.print(f"[green]verified[/green] {len(verifier.lines):,} records, manifest {got}{note}")
    print(json.dumps({"file": str(final), "records": len(verifier.lines), "manifest_sha256": expected["manifest"],
                      "export_manifest_sha256": got, "merkle_root": root, "erased_omitted": expected["omitted"],
                      "verified": True}))


@app.command("verify-proof")
def verify_proof_cmd(
    proof: Annotated[Path, typer.Argument(help="proof JSON from GET /v1/snapshots/{id}/proof, or the answer of "
                                               "POST /v1/snapshots/{id}/proofs ('-': stdin)")],
    root: Annotated[str | None, typer.Option(help="the Merkle root you trust (e.g. from a manifest.json you "
                                                  "kept); without it the proof's own root is used")] = None,
    content: Annotated[Path | None, typer.Option(help="JSON file with the example's content (or a pedigree "
                                                      "export line): its hash must be the proven leaf's")] = None,
) -> None:
    """Check a membership proof offline, with no server and no database: the leaf is recomputed from
    its content hash and split, folded up the audit path, and compared with the root. Exit 0 when it
    holds, 1 when it does not."""
    import sys

    from app.snapshots import merkle

    doc = json.loads(sys.stdin.read() if str(proof) == "-" else proof.read_text())
    if isinstance(doc, dict) and "proofs" in doc and content is None:
        # The answer of POST /v1/snapshots/{id}/proofs: every proof must hold, all against one root.
        results = []
        for p in doc["proofs"]:
            ok, why = merkle.verify_proof(p)
            if ok and str(p.get("merkle_root", "")).lower() != str(root or doc.get("merkle_root", "")).lower():
                ok, why = False, f"the proof is for root {p.get('merkle_root')}, not {root or doc.get('merkle_root')}"
            results.append({"example_id": p.get("leaf", {}).get("example_id"), "verified": ok, "reason": why})
        bad = [r for r in results if not r["verified"]]
        ok = bool(results) and not bad
        (err.print(f"[green]{len(results)} proofs hold") if ok
         else err.print(f"[red]{len(bad)} of {len(results)} proofs fail" if results else "[red]no proofs in the file"))
        print(json.dumps({"verified": ok, "proofs": len(results), "failed": bad,
                          "merkle_root": root or doc.get("merkle_root"), "refused": len(doc.get("refused", []))}))
        if not ok:
            raise typer.Exit(1)
        return
    ok, why = merkle.verify_proof(doc)
    if ok and root is not None and root.lower() != str(doc.get("merkle_root", "")).lower():
        ok, why = False, f"the proof is for root {doc.get('merkle_root')}, not {root}"
    if ok and content is not None:
        c = json.loads(content.read_text())
        c = c.get("content", c) if isinstance(c, dict) and "content_sha256" in c else c
        if _content_sha256(c) != doc["leaf"]["content_sha256"]:
            ok, why = False, "the content does not hash to the proven leaf's content_sha256"
    (err.print("[green]proof holds") if ok else err.print(f"[red]proof fails: {why}"))
    print(json.dumps({"verified": ok, "reason": why, "merkle_root": doc.get("merkle_root"),
                      "leaf_index": doc.get("leaf_index"), "tree_size": doc.get("tree_size")}))
    if not ok:
        raise typer.Exit(1)
