"""Merkle tree over a snapshot's manifest lines, so one member's membership can be proven alone.

The leaves are exactly the lines the manifest hash covers, in the same order:
    sorted(f"{content_sha256} {split}" for each member), UTF-8, byte order.
The tree is RFC 6962 / RFC 9162 (Certificate Transparency) section 2.1:
    leaf hash   = sha256(0x00 || line)
    node hash   = sha256(0x01 || left || right)
    MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two < n
The 0x00 / 0x01 prefixes keep a leaf from ever passing for an inner node (the second-preimage attack
on plain Merkle trees); the uneven split means no node is duplicated to fill a level.

Standard library only and no import from `app`: the trainer, an auditor's script and the CLI can
all use (or copy) it, and the verifier cannot share a bug with anything that wrote the proof.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

ALGORITHM = ("RFC 6962 Merkle tree (sha256) over sorted(f\"{content_sha256} {split}\" for member): "
             "leaf = sha256(0x00 || utf8(line)), node = sha256(0x01 || left || right), "
             "left subtree = the largest power of two below n leaves")


DIGEST_SIZE = hashlib.sha256().digest_size


def leaf_line(content_sha256: str, split: str) -> bytes:
    return f"{content_sha256} {split}".encode()


def leaf_hash(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class RootBuilder:
    """Streaming MTH: feed leaf hashes in order; memory is one hash per set bit of the count.

    The stack holds the roots of the perfect subtrees seen so far, largest first; they are exactly the
    left subtrees of RFC 6962's split, so folding them right to left at the end gives MTH."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, h: bytes) -> None:
        size = 1
        stack = self._stack
        while stack and stack[-1][0] == size:
            h = node_hash(stack.pop()[1], h)
            size *= 2
        stack.append((size, h))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()  # RFC 6962: the hash of an empty tree
        h = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    b = RootBuilder()
    for h in leaf_hashes:
        b.add(h)
    return b.root()


def _path_ranges(index: int, start: int, end: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form the audit path of `index` in D[start:end], leaf side first."""
    out: list[tuple[int, int]] = []
    while end - start > 1:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    out.reverse()
    return out


def audit_path(leaf_hashes: Iterable[bytes], index: int, size: int) -> tuple[bytes, list[bytes], bytes]:
    """(leaf hash at index, audit path, root) from one ordered pass over the leaf hashes, holding
    O(log n) hashes: every leaf but `index` belongs to exactly one path range."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a tree of {size}")
    ranges = _path_ranges(index, 0, size)
    by_start = sorted(range(len(ranges)), key=lambda r: ranges[r][0])
    builders = [RootBuilder() for _ in ranges]
    whole = RootBuilder()
    leaf = b""
    pos = 0  # position in by_start of the range the current leaf falls in
    n = 0
    for j, h in enumerate(leaf_hashes):
        whole.add(h)
        n += 1
        if j == index:
            leaf = h
            continue
        while ranges[by_start[pos]][1] <= j:
            pos += 1
        builders[by_start[pos]].add(h)
    if n != size:
        raise ValueError(f"expected {size} leaves, got {n}")
    return leaf, [b.root() for b in builders], whole.root()


def tree_levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last, paired level by level with an odd last node
    carried up unchanged: the same tree as MTH's largest-power-of-two split (what PostgreSQL builds)."""
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[k], cur[k + 1]) for k in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def path_from_levels(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """The audit path of leaf `index`, leaf side first: the sibling at each level, none where the
    node was carried up alone."""
    out = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            out.append(level[sibling])
        index >>= 1
    return out


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does `path` prove that `leaf` is leaf number `index` of the tree of
    `size` leaves whose root is `root`?"""
    if not 0 <= index < size:
        return False
    # Every hash is one sha256 digest, as RFC 9162 verifiers require: an empty or short leaf would
    # otherwise prove a tree whose "root" the forger computed from it (a one-leaf tree with root b"").
    if any(len(h) != DIGEST_SIZE for h in (leaf, root, *path)):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_proof(proof: dict) -> tuple[bool, str]:
    """Check a proof document as GET /v1/snapshots/{id}/proof returns it: the leaf is recomputed from
    its content hash and split (the served `leaf_hash` is never trusted), then the path to the root."""
    try:
        leaf = proof["leaf"]
        line = leaf_line(leaf["content_sha256"], leaf["split"])
        h = leaf_hash(line)
        if proof.get("leaf_hash") not in (None, h.hex()):
            return False, "leaf_hash does not match sha256(0x00 || line)"
        path = [bytes.fromhex(p) for p in proof["audit_path"]]
        ok = verify_inclusion(h, int(proof["leaf_index"]), int(proof["tree_size"]), path,
                              bytes.fromhex(proof["merkle_root"]))
    except (KeyError, TypeError, ValueError) as e:
        return False, f"malformed proof: {e}"
    return (True, "ok") if ok else (False, "the audit path does not lead to merkle_root")
