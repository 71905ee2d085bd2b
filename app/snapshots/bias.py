"""The snapshot bias report (`GET /v1/snapshots/{id}/bias-report`, docs/bias.md).

Counts mentions of demographic descriptors (app/snapshots/lexicons.py) in every live member, per field role
(prompt: what the model is given; answer: what it learns to say), split, source and license; the members
in which each group co-occurs with an occupation or a sentiment word, as PMI with the counts; and flags
where a group's share of its dimension differs between train and validation, or between one source and
the rest, by more than the dataset's governance policy allows.

Speed: members are read in keyset blocks of column values (the database extracts the role texts and
aggregates a block into one JSON array per column), tokenized and matched by Arrow compute kernels, and
counted with numpy bincounts and one small matrix product per block, so no Python runs per member or per
token. Erased members are left out and counted.
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

    # Whitespace split and trimmed punctuation: 2-3x faster than a Unicode regex split on Arrow, and ASCII
    # blocks (most text) take the ASCII kernels, faster again. Possessives go first, on whole texts.
    is_ascii = pc.all(pc.string_is_ascii(texts)).as_py() is not False
    texts = pc.replace_substring(pc.replace_substring(texts, "'s", ""), "\u2019s", "")
    lists = pc.ascii_split_whitespace(texts) if is_ascii else pc.utf8_split_whitespace(texts)
    flat = pc.utf8_trim(pc.list_flatten(lists), characters=PUNCTUATION)
    if not len(flat):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    parents = pc.list_parent_indices(lists).to_numpy()
    lower = pc.ascii_lower(flat) if is_ascii else pc.utf8_lower(flat)
    uni = pc.fill_null(pc.index_in(lower, value_set=arr.terms), -1).to_numpy().astype(np.int64)
    big_terms = np.zeros(0, dtype=np.int64)
    big_pos = np.zeros(0, dtype=np.int64)
    if len(arr.firsts) and len(lower) > 1:
        first = pc.is_in(lower.slice(0, len(lower) - 1), value_set=arr.firsts).to_numpy(zero_copy_only=False)
        pos = np.nonzero(first & (parents[:-1] == parents[1:]))[0]
        if len(pos):
            ipos = pa.array(pos)
            pairs = pc.binary_join_element_wise(lower.take(ipos), lower.take(pa.array(pos + 1)), " ")
            bid = pc.fill_null(pc.index_in(pairs, value_set=arr.terms), -1).to_numpy().astype(np.int64)
            hit = bid >= 0
            big_pos, big_terms = pos[hit], bid[hit]
            uni[big_pos] = -1
            uni[big_pos + 1] = -1
    upos = np.nonzero(uni >= 0)[0]
    term_ids = np.concatenate([uni[upos], big_terms])
    term_rows = np.concatenate([parents[upos], parents[big_pos]])
    # Names count only in title case ("Maria", not "maria" or "MARIA") and where no lexicon term matched:
    # looked up for title-case tokens only (about a tenth of them).
    tpos = np.nonzero(pc.utf8_is_title(flat).to_numpy(zero_copy_only=False) & (uni < 0))[0]
    nm = pc.fill_null(pc.index_in(lower.take(pa.array(tpos)), value_set=arr.names), -1).to_numpy().astype(np.int64)
    npos = tpos[nm >= 0]
    nm = nm[nm >= 0]
    return term_ids, term_rows, lex.name_group[nm].astype(np.int64), parents[npos]


def _add_block(acc: _Acc, arr: _Arrays, splits: np.ndarray, sources: list[str], licenses: list[str],
               texts: dict[str, Any]) -> None:
    lex = acc.lex
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
    for r, role in enumerate(ROLES):
        tids, trows, name_g, name_rows = _matches(lex, arr, texts[role])
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
    acc.members_g += presence.sum(axis=0)
    # float32 products go through BLAS (numpy's integer matmul does not, and was 70% of the time); the
    # counts are exact in float32 while below 2**24, far above a block's rows.
    p = presence.astype(np.float32)
    acc.members_g_split += np.rint(np.stack([splits == 0, splits == 1]).astype(np.float32) @ p).astype(np.int64)
    acc.cooc_occ += np.rint(p.T @ occ_presence.astype(np.float32)).astype(np.int64)
    acc.members_occ += occ_presence.sum(axis=0)
    acc.cooc_sent += np.rint(p.T @ sent_presence.astype(np.float32)).astype(np.int64)
    acc.members_sent += sent_presence.sum(axis=0)
    acc.valence_sum += p.T.astype(np.float64) @ val_sum
    acc.valence_n += np.rint(p.T @ val_n.astype(np.float32)).astype(np.int64)
    # Per source and license: a few distinct values per block, so a loop over values, not members.
    for labels, target, count_members in ((sources, acc.by_source, True), (licenses, acc.by_license, False)):
        codes, uniq = _codes(labels)
        per = np.bincount(codes[rows] * g_n + g, minlength=len(uniq) * g_n).reshape(len(uniq), g_n)
        sizes = np.bincount(codes, minlength=len(uniq))
        for i, value in enumerate(uniq):
            target[value] = target.get(value, np.zeros(g_n, dtype=np.int64)) + per[i]
            if count_members:
                acc.members_by_source[value] = acc.members_by_source.get(value, 0) + int(sizes[i])


def _codes(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    import pyarrow as pa

    enc = pa.array(labels, pa.string()).dictionary_encode()
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


def _blocks(session: Session, snap: Snapshot, block_rows: int) -> Iterator[tuple[int, str, list, list, list, list, list]]:
    """(count, last example id, splits, sources, licenses, prompts, answers) per block of live members, in
    example-id order (the member partition's primary key), each column one JSON array built by the database."""
    pg = is_pg(session)
    p_sql, a_sql = _role_sql(snap.format, pg)
    agg = "json_agg" if pg else "json_group_array"
    cast = "::text" if pg else ""
    eid = "m.example_id::text" if pg else "m.example_id"
    inner = (f"SELECT {eid} AS eid, m.split AS sp, e.source AS src, COALESCE(e.license, '(none)') AS lic, "
             f"{p_sql} AS p, {a_sql} AS a FROM snapshot_members m "
             "JOIN example_revisions r ON r.id = m.revision_id JOIN examples e ON e.id = m.example_id "
             "WHERE m.snapshot_id = :sid AND m.example_id > :after AND e.status <> 'erased' "
             "ORDER BY m.example_id LIMIT :n")
    sql = (f"SELECT count(*), max(x.eid), {agg}(x.sp){cast}, {agg}(x.src){cast}, {agg}(x.lic){cast}, "
           f"{agg}(x.p){cast}, {agg}(x.a){cast} FROM ({inner}) x")
    stmt = text(sql).bindparams(bindparam("sid", type_=Uuid()), bindparam("after", type_=Uuid()))
    after = uuid.UUID(int=0)
    while True:
        row = session.execute(stmt, {"sid": snap.id, "after": after, "n": block_rows}).one()
        n = row[0]
        if not n:
            return
        yield (n, row[1], *(orjson.loads(v) for v in row[2:]))
        if n < block_rows:
            return
        after = uuid.UUID(row[1])


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
    import pyarrow as pa

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

    def columns(block: tuple) -> tuple:
        _n, _last, splits, sources, licenses, prompts, answers = block
        return ((np.asarray(splits) == "validation").astype(np.int64), sources, licenses,
                {"prompt": pa.array(prompts, pa.string()), "answer": pa.array(answers, pa.string())})

    # The next block is read (the database builds it; the socket wait releases the GIL) while this one is
    # counted. On the loaded 2-core machine the gain did not show (71.6 s before at load 6.5-7, 74.3 s after
    # at load 9-10, 1M members); it should on a machine with a core to spare. Only the prefetch thread
    # uses the session.
    for split_codes, sources, licenses, texts in export._prefetch(_blocks(session, snap, block_rows), columns,
                                                                  depth=2):
        _add_block(acc, arr, split_codes, sources, licenses, texts)
    report = _report(acc, snap, policy, erased=erased)
    _CACHE[key] = copy.deepcopy(report)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return report


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
