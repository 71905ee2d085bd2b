"""The snapshot bias report (`GET /v1/snapshots/{id}/bias-report`, docs/bias.md).

Counts mentions of demographic descriptors (app/snapshots/lexicons.py) in every live member, per field role
(prompt: what the model is given; answer: what it learns to say), split, source and license; the members
in which each group co-occurs with an occupation or a sentiment word, as PMI with the counts; and flags
where a group's share of its dimension differs between train and validation, or between one source and
the rest, by more than the dataset's governance policy allows.

Speed: members are read in keyset blocks (COPY parsed by Arrow on PostgreSQL, one JSON array per column on
SQLite), tokenized by Arrow kernels with every per-token rule run once per distinct token of a block, and
counted with numpy bincounts, so no Python runs per member or per token. Erased members are left out and
counted.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.orm import Session

from app.core.sql import is_pg
from app.datasets import service as datasets
from app.datasets.policies import GovernancePolicy
from app.models.snapshot import Snapshot
from app.snapshots import export, lexicons

ROLES = ("prompt", "answer")
SPLITS = ("train", "validation")
# Tokens: whitespace-separated, these trimmed from both ends; inner hyphens stay ("middle-aged"), and a
# possessive "'s" is dropped first ("woman's" -> "woman").
PUNCTUATION = ".,;:!?\"'()[]{}<>*/\\`~|=+&%$#@^_\u201c\u201d\u2018\u2019\u2014\u2013-"
BLOCK_ROWS = 20_000
MATCH_THREADS = 2
TOP_TERMS = 5
TOP_OCCUPATIONS = 8
CACHE_SIZE = 16
_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
# Pairs seen in fewer members than this get no PMI: with a handful of members PMI is mostly noise.
PMI_MIN_MEMBERS = 5

METHOD = (
    "Lexicon counts over the member revisions' text (docs/bias.md). Tokens: whitespace-separated, punctuation "
    "trimmed from both ends, possessive 's dropped, lower-cased; one- and two-word terms; a two-word match hides "
    "its words' own matches. "
    "Gender: pronouns, gendered terms and title-case first names from nam_dict (male/female only; names that "
    "are English words left out). Roles: prompt = system and user turns, instruction and input, prompt; "
    "answer = assistant turns, output, completion, chosen and rejected. Share = a group's mentions over its "
    "dimension's mentions. Co-occurrence is per member: PMI = log2(n(g,w) * N / (n(g) * n(w))) over members, "
    f"given only where n(g,w) >= {PMI_MIN_MEMBERS}. Sentiment: VADER lexicon words with |valence| >= "
    f"{lexicons.SENTIMENT_MIN_ABS}. Flags: a group's share differs by more than the policy's share_difference "
    "between train and validation, or between one source and the rest of the snapshot, where both sides have "
    "min_mentions mentions of the dimension. Counting words is not measuring bias: see the limits."
)
LIMITS = [
    ("Lexicon matching sees words, not meaning: 'black coffee', 'white paper', 'senior engineer' (not in the "
    "lexicon), negation and sarcasm are all counted or missed the same way."),
    "English only; other languages' descriptors are not counted.",
    ("PII scrubbing replaces most personal names with placeholders before this report runs, so first-name "
    "counts cover only names left in the text (public figures, allowed terms)."),
    "Gender by first name follows nam_dict's majority labels; it is a statistic about names, not about people.",
    ("A mention is not a stereotype: the report shows representation and co-occurrence, and a human must read "
    "the examples behind a flag before calling it bias."),
]


@dataclass
class _Acc:
    lex: lexicons.Lexicons
    n_members: int = 0
    members_by_split: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    mentions: np.ndarray = None  # [role, G]
    mentions_split: np.ndarray = None  # [split, G]
    mentions_kind: np.ndarray = None  # [G, K]
    term_counts: np.ndarray = None  # [T]
    members_g: np.ndarray = None  # [G]
    members_g_split: np.ndarray = None  # [split, G]
    cooc_occ: np.ndarray = None  # [G, O]
    members_occ: np.ndarray = None  # [O]
    cooc_sent: np.ndarray = None  # [G, 2]: positive, negative
    members_sent: np.ndarray = None  # [2]
    valence_sum: np.ndarray = None  # [G]
    valence_n: np.ndarray = None  # [G]
    by_source: dict[str, np.ndarray] = field(default_factory=dict)  # source -> [G]
    by_license: dict[str, np.ndarray] = field(default_factory=dict)
    members_by_source: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g, k, t, o = len(self.lex.groups), len(self.lex.kinds), len(self.lex.terms), len(self.lex.occupations)
        self.mentions = np.zeros((2, g), dtype=np.int64)
        self.mentions_split = np.zeros((2, g), dtype=np.int64)
        self.mentions_kind = np.zeros((g, k), dtype=np.int64)
        self.term_counts = np.zeros(t, dtype=np.int64)
        self.members_g = np.zeros(g, dtype=np.int64)
        self.members_g_split = np.zeros((2, g), dtype=np.int64)
        self.cooc_occ = np.zeros((g, o), dtype=np.int64)
        self.members_occ = np.zeros(o, dtype=np.int64)
        self.cooc_sent = np.zeros((g, 2), dtype=np.int64)
        self.members_sent = np.zeros(2, dtype=np.int64)
        self.valence_sum = np.zeros(g, dtype=np.float64)
        self.valence_n = np.zeros(g, dtype=np.int64)


@dataclass
class _Arrays:
    """The lexicons as Arrow value sets, built once per process."""

    terms: Any
    names: Any
    firsts: Any


_ARRAYS: dict[str, _Arrays] = {}


def _arrays(lex: lexicons.Lexicons) -> _Arrays:
    import pyarrow as pa

    a = _ARRAYS.get(lex.version)
    if a is None:
        a = _ARRAYS[lex.version] = _Arrays(pa.array(lex.terms, pa.string()), pa.array(lex.names, pa.string()),
                                           pa.array(lex.bigram_firsts, pa.string()))
    return a


def _matches(lex: lexicons.Lexicons, arr: _Arrays, texts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(term ids, their member rows, name gender groups, their member rows) for one column of texts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    empty = np.zeros(0, dtype=np.int64)
    # Whitespace split: 2-3x faster than a Unicode regex split on Arrow, and ASCII blocks (most text) take
    # the ASCII kernels, faster again.
    is_ascii = pc.all(pc.string_is_ascii(texts)).as_py() is not False
    lists = pc.ascii_split_whitespace(texts) if is_ascii else pc.utf8_split_whitespace(texts)
    raw = pc.list_flatten(lists)
    if not len(raw):
        return empty, empty, empty, empty
    parents = pc.list_parent_indices(lists).to_numpy()
    # Everything after the split depends on the token alone, so it runs once per distinct token of the block
    # (a block of 20k answers holds ~500k tokens but a few tens of thousands of distinct ones), and only the
    # hits are spread back to token positions: trimming, lower-casing, the title-case test and the three
    # lookups were 60% of the time when they ran per token.
    enc = pc.dictionary_encode(raw)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    n_tok = len(idx)
    # Possessives are dropped per distinct token, not over whole texts (where it was a sixth of the time):
    # "'s" holds no whitespace, so removing it from the text or from each token is the same, except that a
    # token of nothing but possessives leaves no token in the text; such a token is skipped where adjacency
    # matters (the second word of a two-word term). It matches nothing itself.
    vocab = pc.replace_substring(pc.replace_substring(enc.dictionary, "'s", ""), "\u2019s", "")
    v_dropped = pc.equal(pc.binary_length(vocab), 0).to_numpy(zero_copy_only=False)
    vocab = pc.utf8_trim(vocab, characters=PUNCTUATION)
    lower = pc.ascii_lower(vocab) if is_ascii else pc.utf8_lower(vocab)
    v_term = pc.fill_null(pc.index_in(lower, value_set=arr.terms), -1).to_numpy().astype(np.int64)
    term_pos = np.nonzero((v_term >= 0)[idx])[0]
    big_pos, big_next, big_terms = empty, empty, empty
    if len(arr.firsts) and n_tok > 1:
        v_first = pc.is_in(lower, value_set=arr.firsts).to_numpy(zero_copy_only=False)
        cand = np.nonzero(v_first[idx[:-1]])[0]
        nxt = cand + 1
        if len(cand) and v_dropped.any():
            while True:  # as many rounds as the longest run of possessive-only tokens after a first word
                inside = nxt < n_tok
                step = np.zeros(len(nxt), dtype=bool)
                step[inside] = v_dropped[idx[nxt[inside]]]
                if not step.any():
                    break
                nxt[step] += 1
        ok = nxt < n_tok
        cand, nxt = cand[ok], nxt[ok]
        same = parents[cand] == parents[nxt]
        cand, nxt = cand[same], nxt[same]
        if len(cand):
            pairs = pc.binary_join_element_wise(lower.take(pa.array(idx[cand])), lower.take(pa.array(idx[nxt])), " ")
            bid = pc.fill_null(pc.index_in(pairs, value_set=arr.terms), -1).to_numpy().astype(np.int64)
            hit = bid >= 0
            big_pos, big_next, big_terms = cand[hit], nxt[hit], bid[hit]
    # A two-word match hides the matches of its two words.
    if len(big_pos):
        hidden = np.zeros(n_tok, dtype=bool)
        hidden[big_pos] = hidden[big_next] = True
        term_pos = term_pos[~hidden[term_pos]]
    term_ids = np.concatenate([v_term[idx[term_pos]], big_terms])
    term_rows = np.concatenate([parents[term_pos], parents[big_pos]])
    # Names count only in title case ("Maria", not "maria" or "MARIA") and where no lexicon term matched
    # (a word of a two-word term may still be a name, as before).
    titled = np.nonzero(pc.utf8_is_title(vocab).to_numpy(zero_copy_only=False))[0]
    v_name = np.full(len(vocab), -1, dtype=np.int64)
    v_name[titled] = pc.fill_null(pc.index_in(lower.take(pa.array(titled)), value_set=arr.names), -1).to_numpy()
    name_pos = np.nonzero((v_name >= 0)[idx])[0]
    if len(name_pos) and len(term_pos):
        taken = np.zeros(n_tok, dtype=bool)
        taken[term_pos] = True
        name_pos = name_pos[~taken[name_pos]]
    return (term_ids, term_rows, lex.name_group[v_name[idx[name_pos]]].astype(np.int64), parents[name_pos])


def _cooc(rows_a: np.ndarray, a: np.ndarray, rows_b: np.ndarray, b: np.ndarray, n: int, width: int) -> np.ndarray:
    """Members holding each (a, b) pair, from each side's distinct (row, value) pairs sorted by row: every
    a-pair meets the b-pairs of its row. A member names a few groups and words, so this expands to about as
    many pairs as there are mentions; exact integers, and no BLAS (OpenBLAS's threads spun for up to a second
    on a 2 x 20,000 by 20,000 x 94 product on the loaded 2-core machine)."""
    per_row = np.bincount(rows_b, minlength=n)
    starts = np.cumsum(per_row) - per_row
    k = per_row[rows_a]
    total = int(k.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    first = np.repeat(np.cumsum(k) - k, k)
    take = np.arange(total, dtype=np.int64) - first + np.repeat(starts[rows_a], k)
    return np.repeat(a, k) * width + b[take]


def _match_block(lex: lexicons.Lexicons, arr: _Arrays, texts: dict[str, Any]) -> list[tuple[np.ndarray, ...]]:
    return [_matches(lex, arr, texts[role]) for role in ROLES]


def _add_block(acc: _Acc, arr: _Arrays, splits: np.ndarray, sources: Any, licenses: Any,
               texts: dict[str, Any], matched: list[tuple[np.ndarray, ...]] | None = None) -> None:
    lex = acc.lex
    if matched is None:
        matched = _match_block(lex, arr, texts)
    n = len(splits)
    g_n, k_n, o_n = len(lex.groups), len(lex.kinds), len(lex.occupations)
    acc.n_members += n
    acc.members_by_split += np.bincount(splits, minlength=2)
    presence = np.zeros((n, g_n), dtype=bool)
    occ_presence = np.zeros((n, o_n), dtype=bool)
    sent_presence = np.zeros((n, 2), dtype=bool)
    val_sum = np.zeros(n, dtype=np.float64)
    val_n = np.zeros(n, dtype=np.int64)
    g_all, rows_all = [], []
    for r, (tids, trows, name_g, name_rows) in enumerate(matched):
        acc.term_counts += np.bincount(tids, minlength=len(lex.terms))
        groups = lex.term_group[tids].astype(np.int64)
        is_desc = groups >= 0
        g = np.concatenate([groups[is_desc], name_g])
        rows = np.concatenate([trows[is_desc], name_rows])
        kinds = np.concatenate([lex.term_kind[tids[is_desc]].astype(np.int64),
                                np.full(len(name_g), lex.kinds.index("name"), dtype=np.int64)])
        acc.mentions[r] += np.bincount(g, minlength=g_n)
        acc.mentions_kind += np.bincount(g * k_n + kinds, minlength=g_n * k_n).reshape(g_n, k_n)
        g_all.append(g)
        rows_all.append(rows)
        occ = lex.term_occupation[tids]
        is_occ = occ >= 0
        occ_presence[trows[is_occ], occ[is_occ]] = True
        val = lex.term_valence[tids]
        is_sent = val != 0
        sent_presence[trows[is_sent], (val[is_sent] < 0).astype(np.int64)] = True
        val_sum += np.bincount(trows[is_sent], weights=val[is_sent], minlength=n)
        val_n += np.bincount(trows[is_sent], minlength=n)
    g = np.concatenate(g_all)
    rows = np.concatenate(rows_all)
    presence[rows, g] = True
    row_split = splits[rows]
    acc.mentions_split += np.bincount(row_split * g_n + g, minlength=2 * g_n).reshape(2, g_n)
    # Per member from here on: the distinct (member, group) pairs, in member order.
    p_rows, p_g = np.nonzero(presence)
    acc.members_g += np.bincount(p_g, minlength=g_n)
    acc.members_g_split += np.bincount(splits[p_rows] * g_n + p_g, minlength=2 * g_n).reshape(2, g_n)
    o_rows, o_o = np.nonzero(occ_presence)
    acc.cooc_occ += np.bincount(_cooc(p_rows, p_g, o_rows, o_o, n, o_n), minlength=g_n * o_n).reshape(g_n, o_n)
    acc.members_occ += np.bincount(o_o, minlength=o_n)
    s_rows, s_s = np.nonzero(sent_presence)
    acc.cooc_sent += np.bincount(_cooc(p_rows, p_g, s_rows, s_s, n, 2), minlength=g_n * 2).reshape(g_n, 2)
    acc.members_sent += np.bincount(s_s, minlength=2)
    acc.valence_sum += np.bincount(p_g, weights=val_sum[p_rows], minlength=g_n)
    acc.valence_n += np.bincount(p_g, weights=val_n[p_rows], minlength=g_n).astype(np.int64)
    # Per source and license: a few distinct values per block, so a loop over values, not members.
    for labels, target, count_members in ((sources, acc.by_source, True), (licenses, acc.by_license, False)):
        codes, uniq = _codes(labels)
        per = np.bincount(codes[rows] * g_n + g, minlength=len(uniq) * g_n).reshape(len(uniq), g_n)
        sizes = np.bincount(codes, minlength=len(uniq))
        for i, value in enumerate(uniq):
            target[value] = target.get(value, np.zeros(g_n, dtype=np.int64)) + per[i]
            if count_members:
                acc.members_by_source[value] = acc.members_by_source.get(value, 0) + int(sizes[i])


def _codes(labels: Any) -> tuple[np.ndarray, list[str]]:
    import pyarrow as pa

    enc = (labels if isinstance(labels, pa.Array) else pa.array(labels, pa.string())).dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


# ---------------------------------------------------------------------------------------------------------
# Reading the members


def _role_sql(fmt: str, pg: bool) -> tuple[str, str]:
    def field(name: str) -> str:
        return f"(r.content->>'{name}')" if pg else f"json_extract(r.content, '$.{name}')"

    nl = "E'\\n'" if pg else "char(10)"
    if fmt == "chat":
        if pg:
            turn = ("(SELECT string_agg(x->>'content', E'\\n') FROM jsonb_array_elements(r.content->'messages') x "
                    "WHERE (x->>'role') {op} 'assistant')")
        else:
            turn = ("(SELECT group_concat(json_extract(x.value, '$.content'), char(10)) FROM "
                    "json_each(r.content, '$.messages') x WHERE json_extract(x.value, '$.role') {op} 'assistant')")
        return turn.format(op="<>"), turn.format(op="=")
    roles = {"instruction": (("instruction", "input"), ("output",)), "completion": (("prompt",), ("completion",)),
             "preference": (("prompt",), ("chosen", "rejected"))}[fmt]

    def joined(names: tuple[str, ...]) -> str:
        return f" || {nl} || ".join(f"COALESCE({field(n)}, '')" for n in names)

    return joined(roles[0]), joined(roles[1])


def _block_sql(snap: Snapshot, pg: bool, params: tuple[str, str, str]) -> str:
    p_sql, a_sql = _role_sql(snap.format, pg)
    sid, after, n = params
    eid = "m.example_id::text" if pg else "m.example_id"
    return (f"SELECT {eid} AS eid, m.split AS sp, e.source AS src, COALESCE(e.license, '(none)') AS lic, "
            f"{p_sql} AS p, {a_sql} AS a FROM snapshot_members m "
            "JOIN example_revisions r ON r.id = m.revision_id JOIN examples e ON e.id = m.example_id "
            f"WHERE m.snapshot_id = {sid} AND m.example_id > {after} AND e.status <> 'erased' "
            f"ORDER BY m.example_id LIMIT {n}")


def _blocks(session: Session, snap: Snapshot, block_rows: int) -> Iterator[tuple[np.ndarray, Any, Any, Any, Any]]:
    """(split codes, sources, licenses, prompts, answers) per block of live members, in example-id order (the
    member partition's primary key); split codes 0 = train, 1 = validation, the texts as Arrow arrays."""
    import pyarrow as pa

    if is_pg(session):
        yield from _pg_blocks(session, snap, block_rows)
        return
    # SQLite: the database aggregates each column into one JSON array (one row to step through, not n).
    inner = _block_sql(snap, False, (":sid", ":after", ":n"))
    sql = ("SELECT count(*), max(x.eid), json_group_array(x.sp), json_group_array(x.src), json_group_array(x.lic), "
           f"json_group_array(x.p), json_group_array(x.a) FROM ({inner}) x")
    stmt = text(sql).bindparams(bindparam("sid", type_=Uuid()), bindparam("after", type_=Uuid()))
    after = uuid.UUID(int=0)
    while True:
        row = session.execute(stmt, {"sid": snap.id, "after": after, "n": block_rows}).one()
        n = row[0]
        if not n:
            return
        splits, sources, licenses, prompts, answers = (orjson.loads(v) for v in row[2:])
        yield ((np.asarray(splits) == "validation").astype(np.int64), sources, licenses,
               pa.array(prompts, pa.string()), pa.array(answers, pa.string()))
        if n < block_rows:
            return
        after = uuid.UUID(row[1])


_CSV_COLUMNS = ("eid", "sp", "src", "lic", "p", "a")


def _pg_blocks(session: Session, snap: Snapshot, block_rows: int) -> Iterator[tuple[np.ndarray, Any, Any, Any, Any]]:
    # COPY ... (FORMAT csv) parsed by Arrow's CSV reader: no Python object per member or per text. The
    # database's side costs what sending plain rows costs, half of what building one JSON array per column
    # did (json_agg: 0.54 vs 0.27-0.36 s of server CPU per 100,000 members), and the client's drops from
    # 0.56-0.88 s (psycopg rows, then pa.array) to 0.26-0.30 s. COPY takes no parameters: the two ids are
    # formatted from UUID objects and the limit from an int, so nothing else can reach the statement.
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    read = pcsv.ReadOptions(column_names=list(_CSV_COLUMNS))
    # Newlines inside quoted values are the texts' own; NULL (unquoted empty) and "" both read as "", which
    # tokenises to nothing either way.
    parse = pcsv.ParseOptions(newlines_in_values=True)
    convert = pcsv.ConvertOptions(column_types=dict.fromkeys(_CSV_COLUMNS, pa.string()),
                                  strings_can_be_null=False, quoted_strings_can_be_null=False)
    sid = uuid.UUID(str(snap.id))
    after = uuid.UUID(int=0)
    raw = session.connection().connection.driver_connection
    while True:
        sql = _block_sql(snap, True, (f"'{sid}'", f"'{after}'", str(int(block_rows))))
        with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as cp:
            data = b"".join(bytes(chunk) for chunk in cp)
        if not data:
            return
        t = pcsv.read_csv(pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert)
        n = t.num_rows
        splits = pc.equal(t.column("sp"), "validation").to_numpy().astype(np.int64)
        yield (splits, t.column("src").combine_chunks(), t.column("lic").combine_chunks(),
               t.column("p").combine_chunks(), t.column("a").combine_chunks())
        if n < block_rows:
            return
        after = uuid.UUID(t.column("eid")[n - 1].as_py())


def _erased_count(session: Session, snap: Snapshot) -> int:
    stmt = text("SELECT count(*) FROM snapshot_members m JOIN examples e ON e.id = m.example_id "
                "WHERE m.snapshot_id = :sid AND e.status = 'erased'").bindparams(bindparam("sid", type_=Uuid()))
    return int(session.execute(stmt, {"sid": snap.id}).scalar_one())


# ---------------------------------------------------------------------------------------------------------
# The report


def _pmi(joint: int, a: int, b: int, n: int) -> float | None:
    if joint < PMI_MIN_MEMBERS or not a or not b or not n:
        return None
    return round(math.log2(joint * n / (a * b)), 4)


def _share(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def compute(session: Session, snap: Snapshot, *, block_rows: int = BLOCK_ROWS) -> dict[str, Any]:
    lex = lexicons.load()
    arr = _arrays(lex)
    ds = datasets.get(session, snap.dataset_id)
    policy = GovernancePolicy.effective(ds.governance_policy).bias
    erased = _erased_count(session, snap)
    # A snapshot's members never change; only erasures (counted), the lexicons and the policy's thresholds
    # can change the report. The datasheet, Croissant and the technical documentation all ask for it.
    key = (str(snap.id), erased, lex.version, policy.model_dump_json())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return copy.deepcopy(_CACHE[key])
    acc = _Acc(lex)

    def matched(block: tuple) -> tuple:
        splits, sources, licenses, prompts, answers = block
        texts = {"prompt": prompts, "answer": answers}
        return splits, sources, licenses, texts, _match_block(lex, arr, texts)

    # Three stages a block or two apart: reading (one thread, mostly waiting on the database; socket waits
    # release the GIL), tokenising and lookups (MATCH_THREADS threads, a block each: Arrow kernels release
    # the GIL, so the two cores both work), and the numpy counting here, in block order. Only the reading
    # thread uses the session.
    blocks = export._prefetch(_blocks(session, snap, block_rows), lambda b: b, depth=2)
    for split_codes, sources, licenses, texts, m in _ordered_map(blocks, matched, MATCH_THREADS):
        _add_block(acc, arr, split_codes, sources, licenses, texts, m)
    report = _report(acc, snap, policy, erased=erased)
    _CACHE[key] = copy.deepcopy(report)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return report


def _ordered_map(items: Iterator[Any], fn: Any, workers: int) -> Iterator[Any]:
    """fn(item) for each item, `workers` at a time in threads, yielded in order."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="bias-report") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _report(acc: _Acc, snap: Snapshot, policy: Any, *, erased: int) -> dict[str, Any]:
    lex = acc.lex
    n = acc.n_members
    total_g = acc.mentions.sum(axis=0)
    dims: dict[str, Any] = {}
    by_term_group: dict[int, list[tuple[str, int]]] = {}
    for t in np.nonzero(acc.term_counts)[0]:
        g = int(lex.term_group[t])
        if g >= 0:
            by_term_group.setdefault(g, []).append((lex.terms[t], int(acc.term_counts[t])))
    for dim in lexicons.DIMENSIONS:
        gids = [i for i, (d, _) in enumerate(lex.groups) if d == dim]
        dim_total = int(total_g[gids].sum())
        dim_split = acc.mentions_split[:, gids].sum(axis=1)
        groups: dict[str, Any] = {}
        for g in gids:
            name = lex.groups[g][1]
            kinds = {lex.kinds[k]: int(acc.mentions_kind[g, k]) for k in range(len(lex.kinds))
                     if acc.mentions_kind[g, k]}
            occ = []
            for o in np.argsort(-acc.cooc_occ[g])[:TOP_OCCUPATIONS]:
                joint = int(acc.cooc_occ[g, o])
                if joint:
                    occ.append({"occupation": lex.occupations[o], "members": joint,
                                "pmi": _pmi(joint, int(acc.members_g[g]), int(acc.members_occ[o]), n)})
            groups[name] = {
                "mentions": int(total_g[g]),
                "share": _share(total_g[g], dim_total),
                "members": int(acc.members_g[g]),
                "member_share": _share(acc.members_g[g], n),
                "by_role": {role: int(acc.mentions[r, g]) for r, role in enumerate(ROLES)},
                "by_split": {s: int(acc.mentions_split[i, g]) for i, s in enumerate(SPLITS)},
                "share_by_split": {s: _share(acc.mentions_split[i, g], dim_split[i]) for i, s in enumerate(SPLITS)},
                "by_evidence": kinds,
                "by_source": {k: int(v[g]) for k, v in sorted(acc.by_source.items()) if v[g]},
                "by_license": {k: int(v[g]) for k, v in sorted(acc.by_license.items()) if v[g]},
                "top_terms": [[t, c] for t, c in sorted(by_term_group.get(g, []), key=lambda x: -x[1])[:TOP_TERMS]],
                "occupations": occ,
                "sentiment": {
                    "positive": {"members": int(acc.cooc_sent[g, 0]),
                                 "pmi": _pmi(int(acc.cooc_sent[g, 0]), int(acc.members_g[g]), int(acc.members_sent[0]), n)},
                    "negative": {"members": int(acc.cooc_sent[g, 1]),
                                 "pmi": _pmi(int(acc.cooc_sent[g, 1]), int(acc.members_g[g]), int(acc.members_sent[1]), n)},
                    "mean_valence": round(acc.valence_sum[g] / acc.valence_n[g], 4) if acc.valence_n[g] else None,
                },
            }
        dims[dim] = {
            "mentions": dim_total,
            "by_role": {role: int(acc.mentions[r, gids].sum()) for r, role in enumerate(ROLES)},
            "by_split": {s: int(dim_split[i]) for i, s in enumerate(SPLITS)},
            "groups": groups,
        }
    return {
        "snapshot_id": str(snap.id),
        "manifest_sha256": snap.manifest_sha256,
        "members_examined": n,
        "members_by_split": {s: int(acc.members_by_split[i]) for i, s in enumerate(SPLITS)},
        "erased_excluded": erased,
        "dimensions": dims,
        "flags": _flags(acc, policy),
        "thresholds": {"share_difference": policy.share_difference, "min_mentions": policy.min_mentions,
                       "pmi_min_members": PMI_MIN_MEMBERS, "sentiment_min_abs_valence": lexicons.SENTIMENT_MIN_ABS},
        "lexicons": {"version": lex.version, "sources": lex.sources},
        "method": METHOD,
        "limits": LIMITS,
    }


def _flags(acc: _Acc, policy: Any) -> list[dict[str, Any]]:
    lex = acc.lex
    out: list[dict[str, Any]] = []
    total = acc.mentions_split.sum(axis=0)  # [G], all members
    for dim in lexicons.DIMENSIONS:
        gids = [i for i, (d, _) in enumerate(lex.groups) if d == dim]
        tr, va = acc.mentions_split[0, gids], acc.mentions_split[1, gids]
        if tr.sum() >= policy.min_mentions and va.sum() >= policy.min_mentions:
            for j, g in enumerate(gids):
                a, b = tr[j] / tr.sum(), va[j] / va.sum()
                if abs(a - b) > policy.share_difference:
                    out.append({"kind": "split_share", "dimension": dim, "group": lex.groups[g][1],
                                "train_share": round(float(a), 4), "validation_share": round(float(b), 4),
                                "difference": round(float(a - b), 4), "threshold": policy.share_difference,
                                "mentions": {"train": int(tr[j]), "validation": int(va[j])}})
        whole = total[gids]
        for src, per in sorted(acc.by_source.items()):
            mine = per[gids]
            rest = whole - mine
            if mine.sum() < policy.min_mentions or rest.sum() < policy.min_mentions:
                continue
            for j, g in enumerate(gids):
                a, b = mine[j] / mine.sum(), rest[j] / rest.sum()
                if abs(a - b) > policy.share_difference:
                    out.append({"kind": "source_share", "dimension": dim, "group": lex.groups[g][1], "source": src,
                                "source_share": round(float(a), 4), "rest_share": round(float(b), 4),
                                "difference": round(float(a - b), 4), "threshold": policy.share_difference,
                                "mentions": {"source": int(mine[j]), "rest": int(rest[j])}})
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the demo and the documentation: each dimension's largest groups and the flags."""
    lines = [(f"bias report: {report['members_examined']:,} members examined "
             f"({report['erased_excluded']} erased left out), {len(report['flags'])} flag(s)")]
    for dim, d in report["dimensions"].items():
        top = sorted(d["groups"].items(), key=lambda kv: -kv[1]["mentions"])[:3]
        shown = ", ".join(f"{g} {v['share']:.0%}" for g, v in top if v["mentions"])
        lines.append(f"  {dim}: {d['mentions']:,} mentions" + (f" ({shown})" if shown else ""))
    return lines
