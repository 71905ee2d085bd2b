"""MinHash LSH indexes: in memory (embedded default) and in Redis (shared by all workers).

Both use the same first-writer-wins band layout. A band of r hash values is reduced to one 64-bit band
key; the first example to claim a band key owns it, and every later example that lands on the same key is
told the owner and becomes its candidate. Claiming and querying are one operation (``HSETNX``), so two
workers inserting near-duplicates at the same instant cannot both miss each other: Redis orders the two
``HSETNX`` on the shared band key, and the second one sees the first as the owner. Only owners are stored,
so an index costs b small hash fields per example instead of a set member per band plus a key list per
example (datasketch's Redis storage), and a query costs one pipelined round trip per batch instead of one
per band. docs/dedup.md has the measurements.

The price is that a bucket remembers one member, not all: an example that shares a band only with
duplicates of the owner (never with the owner itself) learns only the owner. Verification then compares it
with the owner; if they are below the threshold the link is missed. bench/dedup measures this against
brute force (recall of pairs above the threshold, counted over clusters).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from app.dedup.minhash import IncompatibleSignatures, MinHashSpec, Signatures


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive + false negative probability: datasketch's own
    optimiser, so our index answers like ``MinHashLSH(threshold, num_perm)`` would."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be strictly between 0 and 1")
    # Imported late: it pulls scipy, which only the index needs, and only once per parameter set.
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(threshold, num_perm, weights[0], weights[1])
    return int(b), int(r)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def band_keys(values: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each band's r hash values folded into one 64-bit key, for a whole batch at once.

    A 64-bit key instead of the raw band bytes (datasketch stores r x 4 bytes) keeps Redis fields small; a
    collision between two different bands costs one extra candidate, which verification then drops."""
    n = len(values)
    v = np.ascontiguousarray(values[:, : bands * rows], dtype=np.uint64).reshape(n, bands, rows)
    acc = np.full((n, bands), _FNV_OFFSET, dtype=np.uint64)
    for i in range(rows):
        acc ^= v[:, :, i]
        acc *= _FNV_PRIME
    return _fmix64(acc)


# (false positive weight, false negative weight) for the band/row optimiser. datasketch's even (0.5, 0.5)
# puts the S-curve's midpoint near the threshold, so a pair exactly at 0.8 is proposed only 40% of the
# time (9 bands x 13 rows). Every candidate is verified exactly, so a false positive costs one Jaccard
# computation while a false negative puts a duplicate into training: weigh misses 19:1. At 0.8 that gives
# 16 x 8, P(candidate | J=0.8) = 0.95, and on t0_templates cluster recall 0.84 -> 0.99 (bench/dedup).
DEFAULT_WEIGHTS = (0.05, 0.95)


@dataclass(frozen=True)
class IndexConfig:
    spec: MinHashSpec
    threshold: float = 0.8
    weights: tuple[float, float] = DEFAULT_WEIGHTS

    @property
    def params(self) -> tuple[int, int]:
        return lsh_params(self.threshold, self.spec.num_perm, tuple(self.weights))

    @property
    def tag(self) -> str:
        b, r = self.params
        return f"{self.spec.tag}:b{b}:r{r}"


class MemoryLSHIndex:
    """One process's index (embedded default, tests, benchmarks). Keys may be any hashable."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self.bands, self.rows = config.params
        self._tables: list[dict[int, Hashable]] = [{} for _ in range(self.bands)]

    def _keys(self, sigs: Signatures) -> np.ndarray:
        self.config.spec.check_compatible(sigs.spec)
        return band_keys(sigs.values, self.bands, self.rows)

    def query_insert(self, keys: Sequence[Hashable], sigs: Signatures) -> list[set]:
        """For each example in order: the owners of its band keys (its candidates), then claim the free
        ones. Earlier examples of the same batch are therefore candidates of later ones."""
        bk = self._keys(sigs).tolist()
        empty = sigs.empty
        out: list[set] = []
        for i, key in enumerate(keys):
            cands: set = set()
            if not empty[i]:
                for table, k in zip(self._tables, bk[i], strict=True):
                    owner = table.setdefault(k, key)
                    if owner != key:
                        cands.add(owner)
            out.append(cands)
        return out

    def query(self, sigs: Signatures) -> list[set]:
        bk = self._keys(sigs).tolist()
        empty = sigs.empty
        out: list[set] = []
        for i in range(len(sigs)):
            cands: set = set()
            if not empty[i]:
                for table, k in zip(self._tables, bk[i], strict=True):
                    owner = table.get(k)
                    if owner is not None:
                        cands.add(owner)
            out.append(cands)
        return out

    def remove(self, keys: Sequence[Hashable], sigs: Signatures) -> None:
        bk = self._keys(sigs).tolist()
        for key, row in zip(keys, bk, strict=True):
            for table, k in zip(self._tables, row, strict=True):
                if table.get(k) == key:
                    del table[k]

    def clear(self) -> None:
        for t in self._tables:
            t.clear()

    @property
    def claimed(self) -> int:
        """Band keys claimed (not examples). Not __len__: an empty index must not be falsy."""
        return sum(len(t) for t in self._tables)


# Compare-and-delete: only the owner's own claim goes, never a claim another example made meanwhile.
_REMOVE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# Claim-or-read for a chunk of examples. ARGV: key prefix, band count, field width, then per example its
# packed band locations (per band: 4-byte shard, then the field) and its owner id. Returns a flat list of
# (example position in the chunk, current owner) for every claim another example already holds. HSETNX
# then HGET inside one script: no other client runs in between, so the owner read is the one that beat us.
# The hash names are built here rather than passed as KEYS: 16 names per example were most of the bytes
# redis-py had to pack (measured: packing 16k arguments took longer than Redis took to run the claims).
# That is fine on a single Redis (or a primary with replicas); on Redis Cluster, a hash tag in the prefix
# keeps one dataset's index on one slot.
_CLAIM_LUA = """
local prefix, b, fb = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local w = 4 + fb
local out = {}
for i = 4, #ARGV, 2 do
  local blob, owner = ARGV[i], ARGV[i + 1]
  for j = 0, b - 1 do
    local o = j * w
    local key = prefix .. ':' .. j .. ':' .. string.format('%x', struct.unpack('>I4', blob, o + 1))
    local field = string.sub(blob, o + 5, o + w)
    if redis.call('HSETNX', key, field, owner) == 0 then
      local cur = redis.call('HGET', key, field)
      if cur ~= owner then out[#out + 1] = (i - 4) / 2; out[#out + 1] = cur end
    end
  end
end
return out
"""
# Examples per script call: 250 x 16 bands = 4,000 claims, about 2 ms of Redis time, so a batch never
# holds the server (which is also the Celery broker) for long; all calls of a batch share one round trip.
_CLAIM_CHUNK = 250

# Entries per small hash at the index's capacity. Redis keeps a hash of up to hash-max-listpack-entries
# (128 by default) short fields as one flat listpack, a few bytes per entry instead of a dict entry each.
_ENTRIES_PER_HASH = 100


class RedisLSHIndex:
    """The index shared by all workers. Keys are bytes (a UUID's 16 bytes, say) and come back as bytes.

    Layout under ``prefix``: ``{prefix}:m`` holds the config tag and shard count (an index refuses
    signatures of another spec); ``{prefix}:{band}:{shard}`` are small hashes mapping band key -> owner.
    The shard count is fixed when the index is created, from ``capacity``."""

    def __init__(self, client, prefix: str, config: IndexConfig, *, capacity: int = 1_000_000) -> None:
        self.client = client
        self.prefix = prefix
        self.config = config
        self.bands, self.rows = config.params
        self._capacity_shards = 1 << max(0, int(np.ceil(np.log2(max(1, capacity) / _ENTRIES_PER_HASH))))
        self._remove = client.register_script(_REMOVE_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._open()

    def _open(self) -> None:
        meta_key = f"{self.prefix}:m"
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(meta_key, "tag", self.config.tag)
        pipe.hsetnx(meta_key, "shards", self._capacity_shards)
        pipe.hgetall(meta_key)
        res = pipe.execute()
        # True when this call created the index: its owner may need to warm it from stored signatures.
        self.created = bool(res[0])
        meta = res[-1]
        tag = meta[b"tag"].decode()
        if tag != self.config.tag:
            raise IncompatibleSignatures(f"index {self.prefix!r} holds {tag!r}, not {self.config.tag!r}")
        # An existing index keeps the shard count it was created with, whatever capacity says now.
        self.shards = int(meta[b"shards"])
        self._shard_bits = self.shards.bit_length() - 1
        self._field_bytes = (64 - self._shard_bits + 7) // 8

    def _locate(self, sigs: Signatures) -> tuple[list[list[str]], list[list[bytes]]]:
        self.config.spec.check_compatible(sigs.spec)
        bk = band_keys(sigs.values, self.bands, self.rows)
        shard = (bk & np.uint64(self.shards - 1)).tolist()
        raw = (bk >> np.uint64(self._shard_bits)).astype(">u8").tobytes()
        fb = self._field_bytes
        p = self.prefix
        names, fields = [], []
        for i in range(len(bk)):
            names.append([f"{p}:{j}:{s:x}" for j, s in enumerate(shard[i])])
            base = i * self.bands * 8
            fields.append([raw[base + j * 8 + 8 - fb : base + j * 8 + 8] for j in range(self.bands)])
        return names, fields

    def _packed(self, sigs: Signatures) -> list[bytes]:
        """Per example, its band locations as one string: (4-byte shard, field) per band."""
        self.config.spec.check_compatible(sigs.spec)
        bk = band_keys(sigs.values, self.bands, self.rows)
        n, fb = len(bk), self._field_bytes
        rec = np.zeros((n, self.bands), dtype=[("shard", ">u4"), ("field", f"V{fb}")])
        rec["shard"] = bk & np.uint64(self.shards - 1)
        fields = (bk >> np.uint64(self._shard_bits)).astype(">u8").view(np.uint8).reshape(n, self.bands, 8)
        rec["field"] = np.ascontiguousarray(fields[:, :, 8 - fb :]).view(f"V{fb}").reshape(n, self.bands)
        raw = rec.tobytes()
        w = self.bands * (4 + fb)
        return [raw[i * w : (i + 1) * w] for i in range(n)]

    def query_insert(self, keys: Sequence[bytes], sigs: Signatures) -> list[set[bytes]]:
        """Claim every band key of every example; where a claim fails, the current owner is a candidate.
        One pipelined round trip per batch. Each script call is atomic, so within a chunk and across
        workers the claim and the read of the owner cannot be separated by another writer."""
        packed = self._packed(sigs)
        empty = sigs.empty
        todo = [i for i in range(len(keys)) if not empty[i]]
        out: list[set[bytes]] = [set() for _ in keys]
        if not todo:
            return out
        pipe = self.client.pipeline(transaction=False)
        chunks = [todo[lo : lo + _CLAIM_CHUNK] for lo in range(0, len(todo), _CLAIM_CHUNK)]
        for chunk in chunks:
            args: list = [self.prefix, self.bands, self._field_bytes]
            for i in chunk:
                args += (packed[i], keys[i])
            self._claim(keys=[], args=args, client=pipe)
        for chunk, res in zip(chunks, pipe.execute(), strict=True):
            for pos in range(0, len(res), 2):
                out[chunk[res[pos]]].add(res[pos + 1])
        return out

    def query(self, sigs: Signatures) -> list[set[bytes]]:
        names, fields = self._locate(sigs)
        empty = sigs.empty
        todo = [i for i in range(len(sigs)) if not empty[i]]
        pipe = self.client.pipeline(transaction=False)
        for i in todo:
            for name, f in zip(names[i], fields[i], strict=True):
                pipe.hget(name, f)
        res = pipe.execute()
        out: list[set[bytes]] = [set() for _ in range(len(sigs))]
        for n, i in enumerate(todo):
            out[i] = {o for o in res[n * self.bands : (n + 1) * self.bands] if o is not None}
        return out

    def remove(self, keys: Sequence[bytes], sigs: Signatures) -> None:
        names, fields = self._locate(sigs)
        pipe = self.client.pipeline(transaction=False)
        for i, key in enumerate(keys):
            for name, f in zip(names[i], fields[i], strict=True):
                self._remove(keys=[name], args=[f, key], client=pipe)
        pipe.execute()

    def clear(self) -> int:
        """Empty the index (before a rebuild under the same config). Returns the Redis keys removed."""
        n = drop(self.client, self.prefix)
        self._open()
        return n


def drop(client, prefix: str) -> int:
    """Remove an index whatever its config (a rebuild after a threshold change starts here)."""
    n = 0
    batch: list = []
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(k)
        if len(batch) >= 1000:
            n += client.unlink(*batch)
            batch = []
    if batch:
        n += client.unlink(*batch)
    return n
