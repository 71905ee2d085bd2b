import threading
import uuid

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from app.dedup.lsh import IndexConfig, MemoryLSHIndex, RedisLSHIndex, band_keys, drop, lsh_params
from app.dedup.minhash import IncompatibleSignatures, MinHasher, MinHashSpec, hash_function, shingles
from tests.conftest import REDIS_URL

BASE = (
    "Pedigree keeps a governed record of every training example, who brought it, under which license, and "
    "which reviewers approved it before it reached a snapshot used for fine tuning a model. Duplicates "
    "waste training budget and make a model memorise what it sees twice, so the service finds them at "
    "ingest time and explains every decision it makes to the reviewer who has to accept it."
)


def near_copy(text: str, i: int) -> str:
    words = text.split()
    words[-1 - (i % 2)] = f"changed{i}"  # touches at most 2 of ~70 shingles: Jaccard > 0.94
    return " ".join(words)


@pytest.fixture
def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis is not reachable at PEDIGREE_TEST_REDIS")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client):
    p = f"test:dedup:{uuid.uuid4().hex}"
    yield p
    drop(redis_client, p)


def make_index(kind, redis_client=None, prefix=None, **kw):
    config = IndexConfig(MinHashSpec(), threshold=kw.pop("threshold", 0.8))
    if kind == "memory":
        return MemoryLSHIndex(config)
    return RedisLSHIndex(redis_client, prefix, config, **kw)


def test_params_are_datasketchs():
    for t in (0.5, 0.8, 0.9):
        lsh = MinHashLSH(threshold=t, num_perm=128)
        assert lsh_params(t, 128) == (lsh.b, lsh.r)


def test_band_keys_equal_for_equal_bands_only():
    v = np.tile(np.arange(128, dtype=np.uint32), (2, 1))
    v[1, 13:] += 1  # differs from row 0 everywhere except band 0 (rows 0..12)
    bk = band_keys(v, 9, 13)
    assert bk.shape == (2, 9) and bk.dtype == np.uint64
    assert bk[0, 0] == bk[1, 0]
    assert (bk[0, 1:] != bk[1, 1:]).all()


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_query_then_insert_finds_earlier_batch_and_same_batch(kind, request):
    rc = request.getfixturevalue("redis_client") if kind == "redis" else None
    pf = request.getfixturevalue("prefix") if kind == "redis" else None
    index = make_index(kind, rc, pf)
    mh = MinHasher()
    k = [uuid.uuid4().bytes for _ in range(4)]
    first = index.query_insert([k[0]], mh.signatures([BASE]))
    assert first == [set()]
    texts = [near_copy(BASE, 1), "something entirely different about cooking pasta with garlic and oil", BASE]
    out = index.query_insert(k[1:], mh.signatures(texts))
    assert k[0] in out[0]
    assert out[1] == set()
    assert out[2] & {k[0], k[1]}  # the exact copy sees the owner
    # re-inserting the same key (a retried task) reports nothing new and changes nothing
    assert index.query_insert([k[0]], mh.signatures([BASE])) == [set()]
    assert k[0] in index.query(mh.signatures([near_copy(BASE, 3)]))[0]


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_empty_texts_are_neither_indexed_nor_candidates(kind, request):
    rc = request.getfixturevalue("redis_client") if kind == "redis" else None
    pf = request.getfixturevalue("prefix") if kind == "redis" else None
    index = make_index(kind, rc, pf)
    sigs = MinHasher().signatures(["", "   ", "!!!"])
    assert index.query_insert([b"a", b"b", b"c"], sigs) == [set(), set(), set()]


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_remove_only_drops_own_claims(kind, request):
    rc = request.getfixturevalue("redis_client") if kind == "redis" else None
    pf = request.getfixturevalue("prefix") if kind == "redis" else None
    index = make_index(kind, rc, pf)
    mh = MinHasher()
    s0, s1 = mh.signatures([BASE]), mh.signatures([near_copy(BASE, 2)])
    index.query_insert([b"owner"], s0)
    index.query_insert([b"dup"], s1)
    index.remove([b"dup"], s1)  # dup owns no shared band: the owner's claims must survive
    assert b"owner" in index.query(s1)[0]
    index.remove([b"owner"], s0)
    assert b"owner" not in index.query(s1)[0]


@pytest.mark.redis
def test_redis_index_refuses_other_spec_and_clear_resets(redis_client, prefix):
    index = RedisLSHIndex(redis_client, prefix, IndexConfig(MinHashSpec()), capacity=10_000)
    assert index.shards == 128
    with pytest.raises(IncompatibleSignatures):
        RedisLSHIndex(redis_client, prefix, IndexConfig(MinHashSpec(), threshold=0.5))
    with pytest.raises(IncompatibleSignatures):
        RedisLSHIndex(redis_client, prefix, IndexConfig(MinHashSpec(scheme="legacy")))
    with pytest.raises(IncompatibleSignatures):
        index.query(MinHasher(MinHashSpec(num_perm=64)).signatures([BASE]))
    # reopening with another capacity keeps the shard count the index was built with
    assert RedisLSHIndex(redis_client, prefix, IndexConfig(MinHashSpec()), capacity=10**7).shards == 128
    index.query_insert([b"x"], MinHasher().signatures([BASE]))
    assert index.clear() > 1
    assert index.query(MinHasher().signatures([BASE])) == [set()]


@pytest.mark.redis
def test_concurrent_writers_on_the_same_band_are_always_linked(redis_client, prefix):
    """Many threads insert near-duplicates at the same moment through separate connections: whoever loses
    a band claim must learn the winner, so every example but the first has a candidate."""
    import redis

    mh = MinHasher()
    n = 16
    texts = [near_copy(BASE, i) for i in range(n)]
    sigs = [mh.signatures([t]) for t in texts]
    barrier = threading.Barrier(n)
    results: dict[int, set] = {}

    def worker(i):
        client = redis.Redis.from_url(REDIS_URL)
        index = RedisLSHIndex(client, prefix, IndexConfig(MinHashSpec()))
        barrier.wait()
        results[i] = index.query_insert([f"k{i}".encode()], sigs[i])[0]
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    without = [i for i, c in results.items() if not c]
    assert len(without) <= 1, without  # only the very first writer may have seen nobody


@pytest.mark.redis
def test_redis_and_memory_give_the_same_candidates(redis_client, prefix):
    mh = MinHasher()
    rng = np.random.default_rng(7)
    words = BASE.split()
    texts = []
    for i in range(300):
        w = list(words)
        for _ in range(int(rng.integers(0, 6))):
            w[int(rng.integers(0, len(w)))] = f"x{int(rng.integers(0, 50))}"
        texts.append(" ".join(w) if i % 3 else f"unrelated text number {i} " * 3)
    keys = [i.to_bytes(4, "big") for i in range(len(texts))]
    sigs = mh.signatures(texts)
    mem = MemoryLSHIndex(IndexConfig(MinHashSpec()))
    red = RedisLSHIndex(redis_client, prefix, IndexConfig(MinHashSpec()))
    got_mem, got_red = [], []
    for lo in range(0, len(texts), 64):
        got_mem += mem.query_insert(keys[lo : lo + 64], sigs[lo : lo + 64])
        got_red += red.query_insert(keys[lo : lo + 64], sigs[lo : lo + 64])
    assert got_mem == got_red
    assert sum(bool(c) for c in got_mem) > 50


def test_candidates_cover_datasketch_pairs_above_threshold():
    """Every pair datasketch's MinHashLSH proposes whose estimate clears the threshold ends up connected
    through our index's candidates (first-writer-wins keeps one owner per bucket, so connected, not
    necessarily direct)."""
    from app.dedup.cluster import clusters

    spec = MinHashSpec()
    mh = MinHasher(spec)
    rng = np.random.default_rng(11)
    words = BASE.split()
    texts = []
    for _ in range(200):
        w = list(words)
        for _ in range(int(rng.integers(0, 4))):
            w[int(rng.integers(0, len(w)))] = f"y{int(rng.integers(0, 1000))}"
        texts.append(" ".join(w))
    sigs = mh.signatures(texts)
    ours = MemoryLSHIndex(IndexConfig(spec))
    cands = ours.query_insert(list(range(len(texts))), sigs)
    groups = clusters(((i, c) for i, cs in enumerate(cands) for c in cs), items=range(len(texts)))
    where = {x: gi for gi, g in enumerate(groups) for x in g}
    theirs = MinHashLSH(threshold=0.8, num_perm=128)
    for i, t in enumerate(texts):
        m = MinHash(num_perm=128, hashfunc=hash_function(spec.hash_family))
        m.update_batch(shingles(t, spec)[0])
        for j in theirs.query(m):
            assert where[i] == where[j]
        theirs.insert(i, m)
