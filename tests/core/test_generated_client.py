"""The OpenAPI document proved from outside: a client generated from the served document by
openapi-python-client (what a user of another team would do), imported and driven against a live uvicorn.

It creates a dataset, imports JSONL through the declared `application/x-ndjson` body, reads a 404 and a 422
into the generated `Error` model, pages through the examples with the cursor and downloads an export.
Nothing here reaches the network: the generator reads the document from a file, and its code formatter is
switched off (`post_hooks: []`).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.factories import instruction_line, make_keys
from tests.sdk.test_client import live_server

PACKAGE = "pedigree_generated"
# openapi-python-client reads bodies it knows (JSON, text/*, octet-stream); the real media types of the
# document are kept, and the generated code handles these three as bytes. The requests still carry the
# real Content-Type (the generator writes the document's media type into the header).
CONFIG = f"""\
project_name_override: {PACKAGE}
package_name_override: {PACKAGE}
post_hooks: []
content_type_overrides:
  application/x-ndjson: application/octet-stream
  application/gzip: application/octet-stream
  application/vnd.apache.parquet: application/octet-stream
"""


@pytest.fixture
def server(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Outside the embedded mode the document is served only when asked for.
    monkeypatch.setenv("PEDIGREE_API_DOCS", "true")
    keys = make_keys()
    with live_server(tmp_path / "api.log") as url:
        yield url, keys


def _generate(url: str, where: Path):
    doc = httpx.get(f"{url}/openapi.json", timeout=30).raise_for_status().json()
    (where / "openapi.json").write_text(json.dumps(doc))
    (where / "config.yml").write_text(CONFIG)
    tool = Path(sys.executable).with_name("openapi-python-client")
    out = subprocess.run([str(tool), "generate", "--path", str(where / "openapi.json"), "--meta", "none",
                          "--output-path", str(where / PACKAGE), "--config", str(where / "config.yml")],
                         capture_output=True, text=True, timeout=300, check=False, cwd=where,
                         env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    # Every operation made it into the client: a warning names one the generator had to leave out.
    assert "WARNING" not in out.stdout + out.stderr, out.stdout + out.stderr
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))


def _op(tag: str, operation_id: str):
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{operation_id}")


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_client_generated_from_the_served_document_does_the_work(server, tmp_path):
    url, keys = server
    pkg = _generate(url, tmp_path)
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    create_dataset = _op("datasets", "create_dataset_v1_datasets_post")
    get_dataset = _op("datasets", "get_dataset_v1_datasets_dataset_ref_get")
    import_examples = _op("examples", "import_examples_v1_datasets_dataset_ref_examples_import_post")
    list_examples = _op("examples", "list_examples_v1_datasets_dataset_ref_examples_get")
    create_snapshot = _op("snapshots", "create_snapshot_v1_snapshots_post")
    export_snapshot = _op("snapshots", "export_snapshot_v1_snapshots_snapshot_id_export_get")
    client = pkg.AuthenticatedClient(base_url=url, token=keys["curator"], raise_on_unexpected_status=True)

    with client:
        ds = create_dataset.sync(
            client=client, body=models.DatasetCreate(name="generated-client", format_=models.DatasetCreateFormat("instruction")))
        assert isinstance(ds, models.DatasetOut), ds
        assert ds.name == "generated-client"

        lines = "".join(json.dumps(instruction_line(i)) + "\n" for i in range(120)).encode()
        res = import_examples.sync(
            str(ds.id), client=client, body=types.File(payload=io.BytesIO(lines), mime_type="application/x-ndjson"),
            source="generated")
        assert isinstance(res, models.ImportResult), res
        assert (res.accepted, res.rejected) == (120, 0)

        # A 404 and a 422, each parsed into the document's one Error shape.
        missing = get_dataset.sync("no-such-dataset", client=client)
        assert isinstance(missing, models.Error) and missing.error.code == "not_found", missing
        bad = list_examples.sync(str(ds.id), client=client, limit=0)
        assert isinstance(bad, models.Error) and bad.error.code == "validation_error", bad
        assert bad.error.details[0]["field"] == "limit"

        # Page through the examples with the cursor.
        seen: list[str] = []
        cursor: str | None | object = types.UNSET
        while True:
            page = list_examples.sync(
                str(ds.id), client=client, limit=50, cursor=cursor)
            assert isinstance(page, models.ExamplePage), page
            seen += [e.id for e in page.items]
            assert all(isinstance(e, models.ExampleOut) for e in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)) == 120

        # Freeze everything that is not erased (no pipeline worker runs here) and take an export.
        snap = create_snapshot.sync(client=client, body=models.SnapshotCreate.from_dict({
            "dataset_id": str(ds.id), "name": "generated-1",
            "filter": {"statuses": ["ingested", "scrubbed", "pending_review", "approved"]}}))
        assert isinstance(snap, models.SnapshotView), snap
        assert snap.member_count == 120

    trainer = pkg.AuthenticatedClient(base_url=url, token=keys["trainer"], raise_on_unexpected_status=True)
    with trainer:
        got = export_snapshot.sync_detailed(
            snap.id, client=trainer, format_="pedigree")
        assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
        records = [json.loads(x) for x in got.parsed.payload.read().splitlines()]
        assert len(records) == 120
        assert got.headers["x-manifest-sha256"] == snap.manifest_sha256
        # The generated client's own httpx client streams it too, without holding the whole body.
        n = 0
        with trainer.get_httpx_client().stream("GET", f"/v1/snapshots/{snap.id}/export") as r:
            for line in r.iter_lines():
                n += bool(line)
        assert n == 120
