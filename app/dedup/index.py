"""The store-facing LSH index: a dataset's live index generation in Redis (shared by workers) or in
process, filled from the stored signatures when it is new. The algorithm is lsh.py's.
"""

from __future__ import annotations

import functools
import threading
import uuid
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.dedup.lsh import MemoryLSHIndex, RedisLSHIndex, drop
from app.dedup.minhash import MinHasher, MinHashSpec, Signatures, from_bytes
from app.dedup.schemas import DedupPolicy
from app.models.dedup import DedupSignature

INDEX_PREFIX = "pedigree:dedup"


@functools.lru_cache(maxsize=8)
def _redis_client(url: str):
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # A blip (failover, restart) is absorbed here; a longer outage raises, which rolls the batch back.
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 6),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        socket_timeout=30,
        socket_connect_timeout=5,
    )


_MEMORY: dict[tuple[str, int, str], MemoryLSHIndex] = {}
_MEMORY_LOCK = threading.Lock()


def index_prefix(dataset_id: uuid.UUID, generation: int) -> str:
    return f"{INDEX_PREFIX}:{dataset_id}:g{generation}"


def open_index(session: Session, dataset_id: uuid.UUID, policy: DedupPolicy, generation: int, *, warm: bool = True):
    """The dataset's live index. A freshly created one (a new process in the embedded mode, a Redis that
    lost its data) is first filled from the stored signatures, so earlier examples are still found."""
    config = policy.index_config
    url = get_settings().redis_url
    if url:
        idx: Any = RedisLSHIndex(_redis_client(url), index_prefix(dataset_id, generation), config)
        created = idx.created
    else:
        key = (str(dataset_id), generation, config.tag)
        with _MEMORY_LOCK:
            idx = _MEMORY.get(key)
            created = idx is None
            if created:
                idx = _MEMORY[key] = MemoryLSHIndex(config)
    if created and warm:
        _warm(session, idx, dataset_id, config.spec)
    return idx


def drop_index(dataset_id: uuid.UUID, generation: int) -> None:
    url = get_settings().redis_url
    if url:
        drop(_redis_client(url), index_prefix(dataset_id, generation))
    else:
        with _MEMORY_LOCK:
            for k in [k for k in _MEMORY if k[0] == str(dataset_id) and k[1] == generation]:
                del _MEMORY[k]


def _warm(session: Session, idx, dataset_id: uuid.UUID, spec: MinHashSpec) -> None:
    q = (
        select(DedupSignature.example_id, DedupSignature.signature, DedupSignature.flags)
        .where(DedupSignature.dataset_id == dataset_id, DedupSignature.spec_tag == spec.tag)
        .order_by(DedupSignature.created_at, DedupSignature.example_id)
    )
    batch: list = []
    for row in session.execute(q).yield_per(5000):
        batch.append(row)
        if len(batch) >= 5000:
            _insert_rows(idx, batch, spec)
            batch = []
    if batch:
        _insert_rows(idx, batch, spec)


def _insert_rows(idx, rows: list, spec: MinHashSpec) -> None:
    sigs = Signatures(
        spec,
        np.vstack([from_bytes(r.signature, spec) for r in rows]),
        np.asarray([r.flags for r in rows], dtype=np.int32),
    )
    idx.query_insert([r.example_id.bytes for r in rows], sigs)


@functools.lru_cache(maxsize=16)
def _hasher(spec: MinHashSpec, max_chars: int) -> MinHasher:
    # max_chars is not part of the spec's equality (it does not change comparability), so it keys too.
    return MinHasher(spec)


def hasher(spec: MinHashSpec) -> MinHasher:
    return _hasher(spec, spec.max_chars)

