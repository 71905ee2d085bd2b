"""Bad input is a 4xx naming the field, never a 500 and never a lost batch (real PostgreSQL, which
refuses NUL in text: the findings were 500s there)."""

from __future__ import annotations

import time

import orjson

from tests.factories import new_dataset

NDJSON = {"Content-Type": "application/x-ndjson"}


def _ok(i: int, **prov) -> bytes:
    return orjson.dumps({"instruction": f"question {i}", "output": f"answer {i}",
                         "provenance": {"source_ref": f"r{i}", **prov}})


def _import(api, ds, lines: list[bytes], **params):
    return api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=b"\n".join(lines) + b"\n",
                                   headers=NDJSON, params=params)


def _total(api, ds) -> int:
    return api.as_("auditor").get(f"/v1/datasets/{ds['id']}").json()["counts"]["total"]


def test_nul_in_a_line_is_refused_for_that_line_only(pg_api):
    """Before: a NUL anywhere in a batch was a 500 and the good lines of that batch were lost."""
    ds = new_dataset(pg_api)
    lines = [
        _ok(1),
        b'{"instruction": "a\\u0000b", "output": "x", "provenance": {"source_ref": "r2"}}',
        b'{"instruction": "q3", "output": "x", "provenance": {"source_ref": "ticket\\u0000"}}',
        b'{"instruction": "q4", "output": "x", "provenance": {"metadata": {"k": ["ok", "v\\u0000"]}}}',
        b'{"instruction": "q5", "output": "x", "provenance": {"tags": ["t\\u0000"]}}',
        b'{"instruction": "q6\\ud800", "output": "x"}',
        _ok(7),
    ]
    r = _import(pg_api, ds, lines)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 5)
    errs = {e["line"]: e for e in body["errors"]}
    assert {e["code"] for e in errs.values()} == {"invalid_character"}
    assert errs[2]["field"] == "instruction"
    assert errs[3]["field"] == "provenance.source_ref"
    assert errs[4]["field"] == "provenance.metadata.k[1]"
    assert errs[5]["field"] == "provenance.tags[0]"
    assert _total(pg_api, ds) == 2
    batch = pg_api.as_("auditor").get(f"/v1/ingest-batches/{body['batch_id']}").json()
    assert (batch["accepted"], batch["rejected"], batch["status"]) == (2, 5, "completed")


def test_nul_in_json_bodies_paths_and_queries_is_422_naming_the_field(pg_api):
    """Before: a NUL in a dataset description, in ?source= or in a path was a 500."""
    cur = pg_api.as_("curator")
    r = cur.post("/v1/datasets", json={"name": "d1", "format": "instruction", "description": "a\x00b"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_character"
    assert r.json()["error"]["details"][0]["field"] == "description"
    assert "a\x00b" not in r.text and "a\\u0000b" not in r.text  # the value is never echoed
    r = cur.post("/v1/datasets", content=b'{"name": "d2", "format": "instruction", "description": "\\ud800"}',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "description", r.text
    # A valid surrogate pair is an ordinary character.
    r = cur.post("/v1/datasets", content=b'{"name": "d3", "format": "instruction", "description": "\\ud83d\\ude00"}',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    ds = r.json()
    r = cur.post(f"/v1/datasets/{ds['id']}/examples:import?source=crm%00", content=_ok(1), headers=NDJSON)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "source", r.text
    r = cur.post(f"/v1/datasets/{ds['id']}/examples",
                 json=[{"instruction": "fine", "output": "x"}, {"instruction": "q", "output": "x\x00"}])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "[1].output", r.text
    r = cur.get("/v1/datasets/ds%00x")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "path", r.text
    r = cur.get(f"/v1/datasets/{ds['id']}/examples", params={"source_ref": "r\x00"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "source_ref", r.text
    assert _total(pg_api, ds) == 0


def test_a_request_without_a_key_is_401_whatever_it_holds(pg_api):
    c = pg_api.client
    assert c.get("/v1/datasets/ds%00x").status_code == 401
    assert c.post("/v1/datasets", json={"name": "x", "format": "chat", "description": "\x00"}).status_code == 401
    assert c.get("/v1/audit/events", params={"after": "1\x00"}).status_code == 401


def test_metadata_depth_and_size_are_bounded_per_line(pg_api):
    """Before: metadata nested 900 deep was a 500 (the JSON encoder stops at 255 levels)."""
    deep = b'{"a": ' * 900 + b"{}" + b"}" * 900  # built by hand: orjson itself refuses to write it
    lines = [
        _ok(1),
        b'{"instruction": "q2", "output": "x", "provenance": {"metadata": {"m": ' + deep + b"}}}",
        orjson.dumps({"instruction": "q3", "output": "x", "provenance": {"metadata": {"blob": "x" * 70_000}}}),
        b'{"instruction": "q4", "output": "x", "nested_extra": ' + deep + b"}",  # extra keys join metadata
        _ok(5, metadata={"fine": {"two": {"levels": 1}}}),
    ]
    ds = new_dataset(pg_api)
    r = _import(pg_api, ds, lines)
    assert r.status_code == 200, r.text
    errs = {e["line"]: e for e in r.json()["errors"]}
    assert r.json()["accepted"] == 2
    assert errs[2]["code"] == "metadata_too_deep" and errs[2]["field"].startswith("provenance.metadata.m.a")
    assert errs[3]["code"] == "too_large" and errs[3]["field"] == "provenance.metadata"
    assert errs[4]["code"] == "metadata_too_deep"


def test_integer_query_parameters_out_of_range_are_422_naming_them(pg_api):
    """Before: GET /v1/audit/events?after=10000000000000000000 was a 500 (bigint out of range)."""
    r = pg_api.as_("auditor").get("/v1/audit/events", params={"after": "10000000000000000000"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "after", r.text
    assert pg_api.as_("auditor").get("/v1/audit/events", params={"after": str(2**63 - 1)}).status_code == 200
    big = "99999999999"
    for url, field in [(f"/v1/models/m/versions/{big}", "version"),
                       (f"/v1/lineage/models/m/versions/{big}", "version"),
                       (f"/v1/models/m/versions?cursor={big}", "cursor"),
                       (f"/v1/training-runs/00000000-0000-0000-0000-000000000000/events?cursor={2**64}", "cursor")]:
        r = pg_api.as_("admin").get(url)
        assert r.status_code == 422, (url, r.status_code, r.text)
        assert r.json()["error"]["details"][0]["field"] == field, r.text


def test_an_overlong_line_is_refused_as_soon_as_it_passes_the_limit():
    """Before: a 96 MB line without a newline was re-copied on every chunk (+192 MB, 22.7 s) before
    it was refused."""
    from app.examples.parsing import LineParser, TooLarge

    limit = 256 * 1024
    p = LineParser(limit=limit)
    chunk = b"x" * 65536
    t0 = time.perf_counter()
    out, fed_when_refused = [], None
    for k in range(96 * 1024 * 1024 // len(chunk)):
        got = p.feed(chunk)
        if got and fed_when_refused is None:
            fed_when_refused = (k + 1) * len(chunk)
        out += got
        assert p._size <= limit + len(chunk)  # never more than the limit held
    out += p.feed(b'yyy\n{"next": 1}\n')
    elapsed = time.perf_counter() - t0
    assert out[0] == (1, TooLarge(limit)) and out[1] == (2, b'{"next": 1}') and len(out) == 2
    assert fed_when_refused is not None and fed_when_refused <= limit + len(chunk)
    assert elapsed < 5, elapsed  # the old parser took 22.7 s


def test_an_overlong_line_through_the_api_costs_only_that_line(pg_api):
    ds = new_dataset(pg_api)

    def body():
        yield _ok(1) + b"\n"
        for _ in range(40):  # 2.6 MB in 64 KiB chunks, no newline
            yield b'{"instruction": "' if _ == 0 else b"x" * 65536
        yield b'"}\n' + _ok(3) + b"\n"

    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=b"".join(body()),
                                   headers=NDJSON)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    assert [(e["line"], e["code"]) for e in r.json()["errors"]] == [(2, "too_large")]
