"""Export writers: member batches in, bytes out, one batch in memory at a time.

Formats
- `pedigree`: what our trainer reads; one line per member,
  {"revision_id", "example_id", "split", "format", "content", "content_sha256"}; content_sha256 is
  sha256 over json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False) of the
  parsed content (the line itself may space or order keys differently: hash the value, not the bytes).
- `openai-chat`: {"messages": [...]} (OpenAI / TRL conversational); preference examples in OpenAI's
  preference (DPO) shape {"input": {"messages"}, "preferred_output", "non_preferred_output"}.
- `openai-dpo` (preference datasets only): that DPO shape, the file OpenAI's fine-tuning API takes with
  `method.type: dpo`.
- `trl` (preference datasets only): TRL's conversational preference shape, {"prompt": [messages],
  "chosen": [assistant], "rejected": [assistant]}, for every line (a plain-string prompt becomes one user
  turn), so `datasets` sees one column type and DPOTrainer applies the model's chat template itself.
- `alpaca`: {"instruction", "input", "output"} (+ "system", "history" for multi-turn chats, as
  LLaMA-Factory reads them); preference as {"instruction", "input", "chosen", "rejected"}.
- `completion`: {"prompt", "completion"}: strings, or message lists for chats (TRL's conversational
  prompt-completion shape), so no chat template is baked in here.
- `parquet`: one column per content field of the dataset's format plus revision_id, example_id, split,
  content_sha256; readable by pandas and `datasets.load_dataset("parquet", ...)`. Written row group by
  row group, so it streams too.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.core.db import get_engine
from app.core.sql import is_pg
from app.models.snapshot import Snapshot
from app.snapshots.formats import CONVERTERS
from app.snapshots.repository import erased_members, manifest_hashes


def convert_block(export_format: str, dataset_format: str, block: bytes) -> bytes:
    """pedigree JSONL lines in, lines of another JSONL format out."""
    if export_format == "pedigree":
        return block
    conv = CONVERTERS[export_format]
    return b"".join(orjson.dumps(conv(dataset_format, orjson.loads(line)["content"]), option=orjson.OPT_APPEND_NEWLINE)
                    for line in block.splitlines() if line)


def stream_jsonl(export_format: str, dataset_format: str, blocks: Iterable[bytes]) -> Iterator[bytes]:
    for block in blocks:
        out = convert_block(export_format, dataset_format, block)
        if out:
            yield out


# ---------------------------------------------------------------------------------------------------------
# Parquet

def parquet_schema(dataset_format: str):
    import pyarrow as pa

    s = pa.string()
    fields: list[Any]
    if dataset_format == "chat":
        msg = pa.struct([("role", s), ("content", s), ("weight", pa.int8())])
        fields = [("messages", pa.list_(msg))]
    elif dataset_format == "instruction":
        fields = [("instruction", s), ("input", s), ("output", s)]
    elif dataset_format == "completion":
        fields = [("prompt", s), ("completion", s)]
    else:
        # A prompt is a string or a conversation: one column each, the other null, so a row gives back
        # exactly the stored content (and its hash).
        fields = [("prompt", s), ("prompt_messages", pa.list_(pa.struct([("role", s), ("content", s)]))),
                  ("chosen", s), ("rejected", s)]
    meta = {b"pedigree.format": dataset_format.encode()}
    return pa.schema([*fields, ("split", s), ("revision_id", s), ("example_id", s), ("content_sha256", s)],
                     metadata=meta)


def content_from_parquet_row(dataset_format: str, row: dict[str, Any]) -> dict[str, Any]:
    """The stored content back from a Parquet row. A message without a weight has a null one in
    Parquet; pandas hands weights back as floats (NaN for null), so both are normalised here."""
    if dataset_format == "chat":
        out = []
        for m in row["messages"]:
            msg = {"role": m["role"], "content": m["content"]}
            w = m.get("weight")
            if w is not None and not (isinstance(w, float) and math.isnan(w)):
                msg["weight"] = int(w)
            out.append(msg)
        return {"messages": out}
    if dataset_format == "preference":
        pm = row.get("prompt_messages")
        prompt = row["prompt"] if pm is None else [{"role": m["role"], "content": m["content"]} for m in pm]
        return {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}
    keys = {"instruction": ("instruction", "input", "output"), "completion": ("prompt", "completion")}[dataset_format]
    return {k: row[k] for k in keys}


class _Sink:
    """A write-only file that pyarrow fills and the generator drains after each row group."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self._pos = 0

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.chunks.append(b)
        self._pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def drain(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks = []
        return out


# Formats whose content is flat strings (CSV from PostgreSQL feeds their Parquet); a preference prompt may be
# a conversation, so preference goes through preference_table.
FLAT_FIELDS = {"instruction": ("instruction", "input", "output"), "completion": ("prompt", "completion")}
META_FIELDS = ("split", "revision_id", "example_id", "content_sha256")


def preference_table(contents: list[dict[str, Any]], meta: dict[str, Any], schema: Any) -> Any:
    """Preference rows, built in Python: pyarrow's JSON reader cannot read a field that is a string on
    one line and a list on the next."""
    import pyarrow as pa

    cols: dict[str, Any] = {
        "prompt": [c["prompt"] if isinstance(c["prompt"], str) else None for c in contents],
        "prompt_messages": [None if isinstance(c["prompt"], str) else c["prompt"] for c in contents],
        "chosen": [c["chosen"] for c in contents], "rejected": [c["rejected"] for c in contents], **meta}
    return pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)


def table_from_pedigree(dataset_format: str, block: bytes, schema: Any) -> Any:
    """A block of pedigree lines as an Arrow table, parsed by pyarrow's C++ JSON reader (no Python per
    row, and the GIL is released, so it overlaps with the writer)."""
    import pyarrow as pa
    import pyarrow.json as pj

    if dataset_format == "preference":
        recs = [orjson.loads(line) for line in block.splitlines() if line]
        return preference_table([r["content"] for r in recs], {k: [r[k] for r in recs] for k in META_FIELDS}, schema)

    content = pa.struct([f for f in schema if f.name not in META_FIELDS])
    in_schema = pa.schema([("revision_id", pa.string()), ("example_id", pa.string()), ("split", pa.string()),
                           ("content", content), ("content_sha256", pa.string())])
    # The reader needs every line inside one of its blocks: size them above the longest line.
    longest = max(map(len, block.split(b"\n")), default=0)
    t = pj.read_json(pa.BufferReader(block),
                     read_options=pj.ReadOptions(block_size=max(1 << 20, 2 * longest), use_threads=True),
                     parse_options=pj.ParseOptions(explicit_schema=in_schema, unexpected_field_behavior="ignore"))
    struct = t.column("content").combine_chunks()
    cols = {f.name: struct.field(f.name) for f in content}
    for name in META_FIELDS:
        cols[name] = t.column(name)
    return pa.Table.from_pydict(cols, schema=schema)


def table_from_csv(dataset_format: str, block: bytes, schema: Any) -> Any:
    """A block of CSV rows (the flat content fields, then META_FIELDS) as an Arrow table."""
    import pyarrow as pa
    import pyarrow.csv as pc

    names = [*FLAT_FIELDS[dataset_format], *META_FIELDS]
    return pc.read_csv(
        pa.BufferReader(block),
        read_options=pc.ReadOptions(column_names=names, use_threads=True),
        parse_options=pc.ParseOptions(newlines_in_values=True),
        convert_options=pc.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                          strings_can_be_null=False, quoted_strings_can_be_null=False),
    ).select([f.name for f in schema])


# Column blocks (SQLite): everything below is vectorised (numpy / Arrow), so the cost per member is a
# few bytes copied, not a Python call.

def _fixed_width(data: bytes, n: int, width: int) -> Any:
    import numpy as np
    import pyarrow as pa

    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _uuids(hex32: bytes, n: int) -> Any:
    """32 hex digits each -> the hyphenated 8-4-4-4-12 form, as one binary array."""
    import numpy as np

    a = np.frombuffer(hex32, dtype=np.uint8).reshape(n, 32)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for src, dst in ((0, 0), (8, 9), (12, 14), (16, 19), (20, 24)):
        width = (8, 4, 4, 4, 12)[(0, 8, 12, 16, 20).index(src)]
        out[:, dst:dst + width] = a[:, src:src + width]
    return _fixed_width(out.tobytes(), n, 36)


def _splits(codes: bytes) -> Any:
    import numpy as np
    import pyarrow as pa

    idx = (np.frombuffer(codes, dtype=np.uint8) == ord("v")).astype(np.int8)
    return pa.array([b"train", b"validation"], pa.binary()).take(pa.array(idx))


def _check(block: Any) -> None:
    n = block.count
    if (len(block.revision_ids), len(block.example_ids), len(block.splits), len(block.content_sha256)) != (
            32 * n, 32 * n, n, 64 * n):
        raise ValueError("column block lengths disagree with its member count")


def _binary_to_bytes(arr: Any) -> bytes:
    """The concatenated values of a binary array without nulls: its data buffer between the first and
    last offsets (one copy, no per-value objects)."""
    import numpy as np

    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    return arr.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes()


def pedigree_lines(dataset_format: str, block: Any) -> bytes:
    """A column block as `pedigree` JSONL lines, byte-identical to what SQLite built before: the
    stored JSON text goes in unparsed, ids and hashes are ASCII and need no escaping."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not dataset_format.isalpha():
        raise ValueError(dataset_format)
    _check(block)
    n = block.count
    content = pc.split_pattern(pa.array([block.content], pa.binary()), pattern=b"\n").flatten()
    if len(content) != n:
        raise ValueError("a stored document holds a raw newline")
    b = pa.binary()
    lines = pc.binary_join_element_wise(
        pa.scalar(b'{"revision_id":"', b), _uuids(block.revision_ids, n),
        pa.scalar(b'","example_id":"', b), _uuids(block.example_ids, n),
        pa.scalar(b'","split":"', b), _splits(block.splits),
        pa.scalar(f'","format":"{dataset_format}","content":'.encode(), b), content,
        pa.scalar(b',"content_sha256":"', b), _fixed_width(block.content_sha256, n, 64),
        pa.scalar(b'"}\n', b), pa.scalar(b"", b))
    return _binary_to_bytes(lines)


def table_from_columns(dataset_format: str, block: Any, schema: Any) -> Any:
    """A column block as an Arrow table: only the content documents go through pyarrow's JSON reader
    (ids, hashes and splits are already columns)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.json as pj

    _check(block)
    n = block.count
    s = pa.string()
    if dataset_format == "preference":
        docs = [orjson.loads(d) for d in block.content.split(b"\n")]
        meta = {"split": _splits(block.splits).cast(s), "revision_id": _uuids(block.revision_ids, n).cast(s),
                "example_id": _uuids(block.example_ids, n).cast(s),
                "content_sha256": _fixed_width(block.content_sha256, n, 64).cast(s)}
        return preference_table(docs, meta, schema)
    content = pa.schema([f for f in schema if f.name not in META_FIELDS])
    # The reader needs every document inside one of its blocks: size them above the longest.
    nl = np.flatnonzero(np.frombuffer(block.content, dtype=np.uint8) == ord("\n"))
    longest = int(np.diff(nl, prepend=-1, append=len(block.content)).max()) if n else 0
    t = pj.read_json(pa.BufferReader(block.content),
                     read_options=pj.ReadOptions(block_size=max(1 << 20, 2 * longest), use_threads=True),
                     parse_options=pj.ParseOptions(explicit_schema=content, unexpected_field_behavior="ignore"))
    if t.num_rows != n:
        raise ValueError(f"column block: {t.num_rows} documents for {n} members")
    cols = {f.name: t.column(f.name) for f in content}
    cols["split"] = _splits(block.splits).cast(s)
    cols["revision_id"] = _uuids(block.revision_ids, n).cast(s)
    cols["example_id"] = _uuids(block.example_ids, n).cast(s)
    cols["content_sha256"] = _fixed_width(block.content_sha256, n, 64).cast(s)
    return pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)


def _prefetch(items: Iterable[Any], fn: Callable[[Any], Any], depth: int = 1) -> Iterator[Any]:
    """fn(item) for each item, computed one step ahead in a thread: reading the database and parsing
    (which release the GIL) overlap with compressing and sending. Stops the thread if the consumer
    goes away (a client that disconnects mid-download)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                out = fn(item)
                while not stop.is_set():
                    try:
                        q.put(("ok", out), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("ok", done))
        except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
            q.put(("err", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None and stop.is_set():
                close()

    t = threading.Thread(target=work, name="snapshot-export", daemon=True)
    t.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "err":
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        t.join(timeout=30)


def stream_parquet(dataset_format: str, blocks: Iterable[Any], *, metadata: dict[str, str],
                   csv: bool = False, columns: bool = False) -> Iterator[bytes]:
    """Each block (pedigree lines, CSV rows for flat formats, or SQLite column blocks) becomes one row
    group, written and sent before the next is read."""
    import pyarrow.parquet as pq

    schema = parquet_schema(dataset_format)
    schema = schema.with_metadata({**schema.metadata, **{k.encode(): v.encode() for k, v in metadata.items()}})
    parse = table_from_columns if columns else table_from_csv if csv else table_from_pedigree
    sink = _Sink()
    # Dictionary encoding only where values repeat: ids and hashes are unique, and trying a
    # dictionary on them costs time for nothing.
    writer = pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=["split"])
    for table in _prefetch(blocks, lambda b: parse(dataset_format, b, schema)):
        writer.write_table(table)
        data = sink.drain()
        if data:
            yield data
    writer.close()
    tail = sink.drain()
    if tail:
        yield tail


# ---------------------------------------------------------------------------------------------------------
# Member blocks from the database


@dataclass
class ExportPlan:
    """What one export will contain, known before the first byte is sent (it goes in the headers)."""

    snapshot_id: uuid.UUID
    name: str
    dataset_format: str
    split: str
    manifest_sha256: str  # the original freeze, on record forever
    export_manifest_sha256: str  # exactly the members in this export
    count: int
    omitted_erased: list[uuid.UUID]


def plan_export(session: Session, snap: Snapshot, *, split: str) -> ExportPlan:
    erased = erased_members(session, snap)
    if erased:
        hashes = manifest_hashes(session, snap.id, omit=erased)
        key = "all" if split == "all" else split
        export_sha, count = hashes[key]["sha256"], hashes[key]["count"]
    elif split == "all":
        export_sha, count = snap.manifest_sha256, snap.member_count
    else:
        export_sha, count = snap.split_manifests[split], snap.counts[split]
    return ExportPlan(snapshot_id=snap.id, name=snap.name, dataset_format=snap.format, split=split,
                      manifest_sha256=snap.manifest_sha256, export_manifest_sha256=export_sha, count=count,
                      omitted_erased=erased)


def _pedigree_line_sql(plan: ExportPlan) -> str:
    """One pedigree JSONL line per member, built by PostgreSQL. Everything inlined is ours (uuids,
    a validated split and format): COPY takes no bind parameters."""
    cond = _member_cond(plan)
    return (
        "SELECT '{\"revision_id\":\"' || m.revision_id || '\",\"example_id\":\"' || m.example_id || "
        "'\",\"split\":\"' || m.split || "
        f"'\",\"format\":\"{plan.dataset_format}\",\"content\":' || r.content::text || "
        "',\"content_sha256\":\"' || m.content_sha256 || '\"}' "
        f"FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id WHERE {cond} "
        "ORDER BY m.example_id"
    )


def _member_cond(plan: ExportPlan) -> str:
    for value in (plan.dataset_format, plan.split):
        if not value.isalpha():
            raise ValueError(value)
    cond = f"m.snapshot_id = '{uuid.UUID(str(plan.snapshot_id))}'"
    if plan.split != "all":
        cond += f" AND m.split = '{plan.split}'"
    if plan.omitted_erased:
        cond += " AND m.example_id NOT IN (" + ", ".join(f"'{uuid.UUID(str(u))}'" for u in plan.omitted_erased) + ")"
    return cond


def _copy_blocks(copy_sql: str, block_rows: int, unescape: bool) -> Iterator[bytes]:
    engine = get_engine()
    with engine.connect() as conn:
        # A walk of the partition's primary key joined to revisions by key, in order: no sort, no
        # hash of a million revisions, first bytes out at once.
        for setting in ("enable_hashjoin = off", "enable_mergejoin = off", "enable_sort = off",
                        "max_parallel_workers_per_gather = 0", "jit = off"):
            conn.exec_driver_sql(f"SET LOCAL {setting}")
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(copy_sql) as cp:
            buf: list[Any] = []
            for row in cp:
                buf.append(row)
                if len(buf) >= block_rows:
                    block = b"".join(buf)
                    # COPY's text format doubles every backslash; JSON text has no other byte it escapes.
                    yield block.replace(b"\\\\", b"\\") if unescape else block
                    buf = []
            if buf:
                block = b"".join(buf)
                yield block.replace(b"\\\\", b"\\") if unescape else block
        conn.rollback()


def iter_csv_blocks(plan: ExportPlan, fields: tuple[str, ...], *, block_rows: int = 20_000) -> Iterator[bytes]:
    """PostgreSQL: CSV rows of the given top-level content fields, then split, revision_id, example_id,
    content_sha256. For flat formats this feeds Parquet faster than JSON lines do: `->>` extracts a
    field without printing the whole document, and CSV parses faster than JSON."""
    for f in fields:
        if not f.isalpha():
            raise ValueError(f)
    if not is_pg(get_engine()):
        # SQLite's json_extract re-parses the document per field: its pedigree lines through
        # pyarrow's JSON reader measured faster.
        raise ValueError("CSV export blocks need PostgreSQL")
    cols = ", ".join(f"r.content->>'{f}'" for f in fields)
    sql = (f"COPY (SELECT {cols}, m.split, m.revision_id, m.example_id, m.content_sha256 "
           f"FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id WHERE {_member_cond(plan)} "
           f"ORDER BY m.example_id) TO STDOUT WITH (FORMAT csv)")
    yield from _copy_blocks(sql, block_rows, unescape=False)


def iter_pedigree_blocks(plan: ExportPlan, *, block_rows: int = 5000) -> Iterator[bytes]:
    """Blocks of complete `pedigree` JSONL lines in example-id order, on a connection of their own (the
    request's session is gone by the time a streamed body is sent). Memory: one block.

    PostgreSQL builds every line itself and streams them with COPY, so the database and this process
    work in parallel and Python does nothing per row. The content is the stored JSONB as PostgreSQL
    prints it: the same JSON value (it hashes the same once parsed), not the same bytes. SQLite hands
    over column blocks (below) that Arrow joins into lines."""
    engine = get_engine()
    if not is_pg(engine):
        for block in iter_column_blocks(plan, block_rows=block_rows):
            yield pedigree_lines(plan.dataset_format, block)
        return
    yield from _copy_blocks(f"COPY ({_pedigree_line_sql(plan)}) TO STDOUT", block_rows, unescape=True)


@dataclass
class ColumnBlock:
    """Up to block_rows members, one bytes value per column: SQLite concatenates each column of the
    block itself (group_concat), so Python handles a few strings per block and never a row."""

    count: int
    content: bytes  # the stored JSON documents, "\n"-separated (JSON text holds no raw newline)
    revision_ids: bytes  # 32 hex digits each (how SQLite stores UUIDs)
    example_ids: bytes
    splits: bytes  # b"t" or b"v" each
    content_sha256: bytes  # 64 hex digits each


def iter_column_blocks(plan: ExportPlan, *, block_rows: int = 10_000) -> Iterator[ColumnBlock]:
    """SQLite: the export's members as column blocks, in example-id order.

    Profiled on 100k members, the old path (SQLite building each JSON line, UUIDs hyphenated with
    substr, SQLAlchemy rows joined in Python) spent over half its time in SQLite's string building
    (the ten substr and || per UUID pair cost more than the whole join) and in per-row Row objects.
    Here each block is one keyset query on the partition's primary key returning six values; the
    lines or Arrow columns are built vectorised (export.pedigree_lines, export.table_from_columns).
    All blocks are read in one read transaction, so they see one state of the database."""
    engine = get_engine()
    if is_pg(engine):
        raise ValueError("column blocks are the SQLite export path")
    for value in (plan.dataset_format, plan.split):
        if not value.isalpha():
            raise ValueError(value)
    cond = ""
    args: list[Any] = []
    if plan.split != "all":
        cond += " AND m.split = ?"
        args.append(plan.split)
    if plan.omitted_erased:
        # One JSON parameter instead of one per id: no limit on the number of erased members.
        cond += " AND m.example_id NOT IN (SELECT value FROM json_each(?))"
        args.append(json.dumps([uuid.UUID(str(u)).hex for u in plan.omitted_erased]))
    sql = ("SELECT count(*), max(eid), group_concat(c, char(10)), group_concat(rid, ''), group_concat(eid, ''), "
           "group_concat(sp, ''), group_concat(sha, '') FROM ("
           "SELECT r.content AS c, m.revision_id AS rid, m.example_id AS eid, substr(m.split, 1, 1) AS sp, "
           "m.content_sha256 AS sha FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id "
           f"WHERE m.snapshot_id = ? AND m.example_id > ?{cond} ORDER BY m.example_id LIMIT ?)")
    sid = uuid.UUID(str(plan.snapshot_id)).hex
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("BEGIN")
        try:
            after = ""
            while True:
                n, last, content, rids, eids, splits, shas = raw.execute(sql, (sid, after, *args, block_rows)).fetchone()
                if not n:
                    break
                yield ColumnBlock(n, content.encode(), rids.encode("ascii"), eids.encode("ascii"),
                                  splits.encode("ascii"), shas.encode("ascii"))
                if n < block_rows:
                    break
                after = last
        finally:
            raw.execute("ROLLBACK")
