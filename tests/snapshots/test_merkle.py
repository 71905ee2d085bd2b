"""Merkle roots and membership proofs: the construction against RFC 6962's published vectors and its
recursive definition, the PostgreSQL (set-based SQL) and SQLite (streamed Python) roots and paths
against that reference, the endpoint, erasure, roles, the CLI verifier and tampered proofs."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from app.snapshots import merkle
from tests.factories import approved_dataset, export_records, freeze, set_status, sql

# Certificate Transparency's test leaves and the roots of their prefixes (RFC 6962 reference code).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


def _mth(d: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC states it."""
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(d[:k]) + _mth(d[k:])).digest()


def _path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) <= 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return _path(m, d[:k]) + [_mth(d[k:])] if m < k else _path(m - k, d[k:]) + [_mth(d[:k])]


def test_rfc6962_vectors_and_definition():
    for n, want in enumerate(CT_ROOTS, start=1):
        assert merkle.root_of(map(merkle.leaf_hash, CT_LEAVES[:n])).hex() == want
    assert merkle.root_of([]).hex() == hashlib.sha256(b"").hexdigest()
    for n in range(1, 40):
        d = [f"{i:064x} train".encode() for i in range(n)]
        leaves = [merkle.leaf_hash(x) for x in d]
        root = _mth(d)
        assert merkle.root_of(leaves) == root
        for m in range(n):
            leaf, path, got_root = merkle.audit_path(iter(leaves), m, n)
            assert (leaf, path, got_root) == (leaves[m], _path(m, d), root)
            assert merkle.verify_inclusion(leaf, m, n, path, root)
            if n > 1:
                assert not merkle.verify_inclusion(leaf, (m + 1) % n, n, path, root)  # wrong index
                assert not merkle.verify_inclusion(leaves[(m + 1) % n], m, n, path, root) or d[m] == d[(m + 1) % n]
            if path:
                assert not merkle.verify_inclusion(leaf, m, n, path[:-1], root)  # truncated
                assert not merkle.verify_inclusion(leaf, m, n, [*path, path[-1]], root)  # padded


def test_a_leaf_cannot_pass_for_an_inner_node():
    # Without the 0x00/0x01 prefixes, the 64 bytes of two child hashes, presented as one "leaf" of a
    # smaller tree, would prove a member that was never frozen (the second-preimage attack).
    d = [f"{i:064x} train".encode() for i in range(4)]
    leaves = [merkle.leaf_hash(x) for x in d]
    root = merkle.root_of(leaves)
    forged = leaves[0] + leaves[1]
    assert not merkle.verify_inclusion(merkle.leaf_hash(forged), 0, 2, [merkle.node_hash(leaves[2], leaves[3])], root)


def test_hashes_that_are_not_sha256_digests_are_refused():
    # RFC 9162 verifiers (transparency-dev/merkle's RootFromInclusionProof) refuse a leaf or path hash
    # that is not one digest long: a zero-length leaf "proves" a one-leaf tree whose root is b"", and a
    # short leaf folded with a real sibling reaches whatever root the forger computed from it.
    assert not merkle.verify_inclusion(b"", 0, 1, [], b"")
    sibling = merkle.leaf_hash(b"x")
    assert not merkle.verify_inclusion(b"", 0, 2, [sibling], merkle.node_hash(b"", sibling))
    short = b"\x01" * 31
    assert not merkle.verify_inclusion(short, 0, 2, [sibling], merkle.node_hash(short, sibling))
    leaf = merkle.leaf_hash(b"a")
    assert not merkle.verify_inclusion(leaf, 0, 2, [b"\x02" * 33], merkle.node_hash(leaf, b"\x02" * 33))
    assert not merkle.verify_inclusion(leaf, 0, 1, [], leaf + b"\x00")
    assert merkle.verify_inclusion(leaf, 0, 2, [sibling], merkle.node_hash(leaf, sibling))


def _proof(api, snap_id: str, role: str = "auditor", **params):
    return api.as_(role).get(f"/v1/snapshots/{snap_id}/proof", params=params)


def test_root_at_freeze_and_proofs_for_every_member(api):
    # 13 members: an uneven tree, so odd nodes are promoted at several levels.
    ds, _ = approved_dataset(api, 13)
    snap = freeze(api, ds, validation_fraction=0.3, seed=3)
    recs, _ = export_records(api, snap["id"])
    lines = sorted(f"{r['content_sha256']} {r['split']}".encode() for r in recs)
    assert snap["merkle_root"] == _mth(lines).hex()
    m = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/manifest.json").json()
    assert m["merkle_root"] == snap["merkle_root"] and m["merkle_tree_size"] == 13
    assert api.as_("trainer").get(f"/v1/snapshots/{snap['id']}").json()["merkle_root"] == snap["merkle_root"]

    for rec in recs:
        r = _proof(api, snap["id"], example_id=rec["example_id"])
        assert r.status_code == 200, r.text
        p = r.json()
        assert r.headers["X-Merkle-Root"] == p["merkle_root"] == snap["merkle_root"]
        line = f"{rec['content_sha256']} {rec['split']}".encode()
        assert p["leaf"]["line"] == line.decode() and p["leaf"]["revision_id"] == rec["revision_id"]
        assert p["tree_size"] == 13 and lines[p["leaf_index"]] == line
        assert [bytes.fromhex(h) for h in p["audit_path"]] == _path(p["leaf_index"], lines)
        assert merkle.verify_proof(p) == (True, "ok")
    by_rev = _proof(api, snap["id"], revision_id=recs[0]["revision_id"]).json()
    assert by_rev == _proof(api, snap["id"], example_id=recs[0]["example_id"]).json()


def test_tampered_proofs_fail(api):
    ds, _ = approved_dataset(api, 9)
    snap = freeze(api, ds, validation_fraction=0.2)
    recs, _ = export_records(api, snap["id"])
    good = _proof(api, snap["id"], example_id=recs[4]["example_id"]).json()
    assert merkle.verify_proof(good)[0]

    def flip(h: str) -> str:
        return ("0" if h[0] != "0" else "1") + h[1:]

    tampered = []
    for edit in (
        lambda p: p["leaf"].update(content_sha256=flip(p["leaf"]["content_sha256"])),  # another content
        lambda p: p["leaf"].update(split="validation" if p["leaf"]["split"] == "train" else "train"),
        lambda p: p.update(audit_path=[flip(p["audit_path"][0]), *p["audit_path"][1:]]),
        lambda p: p.update(audit_path=p["audit_path"][:-1]),
        lambda p: p.update(leaf_index=(p["leaf_index"] + 1) % p["tree_size"]),
        lambda p: p.update(merkle_root=flip(p["merkle_root"])),
        lambda p: p.update(leaf_hash=flip(p["leaf_hash"])),
        lambda p: p.update(audit_path=["zz"]),
    ):
        p = copy.deepcopy(good)
        edit(p)
        tampered.append(p)
        assert merkle.verify_proof(p)[0] is False, p


def test_proof_refusals_and_roles(api):
    ds, ids = approved_dataset(api, 6)
    set_status(ids[:1], "pending_review")
    snap = freeze(api, ds, validation_fraction=0.0)
    member = ids[3]
    for role in ("trainer", "auditor", "curator", "admin"):
        assert _proof(api, snap["id"], role, example_id=member).status_code == 200, role
    assert _proof(api, snap["id"], "reviewer", example_id=member).status_code == 403
    assert api.client.get(f"/v1/snapshots/{snap['id']}/proof", params={"example_id": member}).status_code == 401

    r = _proof(api, snap["id"], example_id=ids[0])  # excluded at freeze
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_a_member"
    assert _proof(api, snap["id"]).status_code == 422
    assert _proof(api, snap["id"], example_id=member, revision_id=member).status_code == 422
    assert _proof(api, snap["id"], example_id="nope").status_code == 422
    assert _proof(api, "9d1f0000-0000-0000-0000-000000000000", example_id=member).status_code == 404

    # Erased after the freeze: the root of the original freeze stays, the erased member gets no proof,
    # and every other member's proof still verifies against that root.
    set_status([member], "erased")
    r = _proof(api, snap["id"], example_id=member)
    assert r.status_code == 409 and r.json()["error"]["code"] == "member_erased"
    m = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/manifest.json").json()
    assert m["merkle_root"] == snap["merkle_root"] and m["erased_example_ids"] == [member]
    p = _proof(api, snap["id"], example_id=ids[4]).json()
    assert p["merkle_root"] == snap["merkle_root"] and p["tree_size"] == 5 and merkle.verify_proof(p)[0]


@pytest.mark.parametrize("n", [1, 2, 13, 33])
def test_many_proofs_from_one_tree(api, n):
    """POST /proofs: every member's proof equals the single endpoint's (RFC 6962 paths against the
    reference), in the order asked, by example or by revision; a stranger is listed, not raised."""
    ds, _ = approved_dataset(api, n)
    snap = freeze(api, ds, validation_fraction=0.3, seed=5)
    recs, _ = export_records(api, snap["id"])
    lines = sorted(f"{r['content_sha256']} {r['split']}".encode() for r in recs)
    stranger = "9d1f0000-0000-0000-0000-000000000000"
    r = api.as_("auditor").post(f"/v1/snapshots/{snap['id']}/proofs",
                                json={"example_ids": [x["example_id"] for x in recs] + [stranger]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Merkle-Root"] == body["merkle_root"] == snap["merkle_root"] and body["tree_size"] == n
    assert body["refused"] == [{"example_id": stranger, "code": "not_a_member",
                                "message": f"example_id {stranger} is not a member of snapshot {snap['id']}"}]
    assert [p["leaf"]["example_id"] for p in body["proofs"]] == [x["example_id"] for x in recs]
    for p in body["proofs"]:
        assert merkle.verify_proof(p) == (True, "ok")
        assert [bytes.fromhex(h) for h in p["audit_path"]] == _path(p["leaf_index"], lines)
        assert p == _proof(api, snap["id"], example_id=p["leaf"]["example_id"]).json()
    by_rev = api.as_("trainer").post(f"/v1/snapshots/{snap['id']}/proofs",
                                     json={"revision_ids": [recs[0]["revision_id"]]}).json()
    assert by_rev["proofs"] == [_proof(api, snap["id"], example_id=recs[0]["example_id"]).json()]


def test_many_proofs_refusals_and_validation(api):
    ds, ids = approved_dataset(api, 5)
    snap = freeze(api, ds, validation_fraction=0.0)
    url = f"/v1/snapshots/{snap['id']}/proofs"
    set_status([ids[1]], "erased")
    body = api.as_("auditor").post(url, json={"example_ids": ids}).json()
    assert [x["example_id"] for x in body["refused"]] == [ids[1]] and body["refused"][0]["code"] == "member_erased"
    assert sorted(p["leaf"]["example_id"] for p in body["proofs"]) == sorted(ids[:1] + ids[2:])
    assert all(merkle.verify_proof(p)[0] for p in body["proofs"])
    # The CLI checks the whole answer offline: all hold; one tampered proof fails the file.
    from typer.testing import CliRunner

    from app.cli import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["snapshot", "verify-proof", "-", "--root", snap["merkle_root"]], input=json.dumps(body))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["proofs"] == 4
    body["proofs"][2]["leaf"]["split"] = "validation"
    r = runner.invoke(cli, ["snapshot", "verify-proof", "-"], input=json.dumps(body))
    assert r.exit_code == 1 and len(json.loads(r.stdout.strip().splitlines()[-1])["failed"]) == 1
    assert api.as_("reviewer").post(url, json={"example_ids": ids}).status_code == 403
    for bad in ({}, {"example_ids": ids, "revision_ids": ids}, {"example_ids": []}, {"example_ids": ["nope"]},
                {"example_ids": ids * 2001}):
        r = api.as_("auditor").post(url, json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = api.as_("auditor").post(url, json={"example_ids": ["nope"]})
    assert r.json()["error"]["details"][0]["field"] == "example_ids[0]"


def test_snapshots_frozen_before_the_column_get_their_root_once(api):
    ds, _ = approved_dataset(api, 7)
    snap = freeze(api, ds, validation_fraction=0.3)
    sql("UPDATE snapshots SET merkle_root = NULL")
    recs, _ = export_records(api, snap["id"])
    r = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/proof", params={"example_id": recs[0]["example_id"]})
    assert r.status_code == 200 and r.json()["merkle_root"] == snap["merkle_root"]
    assert api.as_("auditor").get(f"/v1/snapshots/{snap['id']}").json()["merkle_root"] == snap["merkle_root"]
    from app.core.db import session_scope
    from app.models.snapshot import Snapshot

    with session_scope() as s:
        assert s.get(Snapshot, __import__("uuid").UUID(snap["id"])).merkle_root == snap["merkle_root"]


def test_cli_verify_proof_and_export_checks_the_root(api, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app as cli

    ds, _ = approved_dataset(api, 5)
    snap = freeze(api, ds, validation_fraction=0.4)
    recs, _ = export_records(api, snap["id"])
    proof = _proof(api, snap["id"], example_id=recs[2]["example_id"]).json()
    good = tmp_path / "proof.json"
    good.write_text(json.dumps(proof))
    content = tmp_path / "line.json"
    content.write_text(json.dumps(recs[2]))
    runner = CliRunner()
    res = runner.invoke(cli, ["snapshot", "verify-proof", str(good), "--root", snap["merkle_root"],
                              "--content", str(content)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["verified"] is True

    bad = tmp_path / "bad.json"
    proof["audit_path"][0] = "00" * 32
    bad.write_text(json.dumps(proof))
    res = runner.invoke(cli, ["snapshot", "verify-proof", str(bad)])
    assert res.exit_code == 1 and json.loads(res.stdout.strip().splitlines()[-1])["verified"] is False
    res = runner.invoke(cli, ["snapshot", "verify-proof", str(good), "--root", "ab" * 32])
    assert res.exit_code == 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(recs[3]))
    res = runner.invoke(cli, ["snapshot", "verify-proof", str(good), "--content", str(other)])
    assert res.exit_code == 1

    res = runner.invoke(cli, ["snapshot", "export", snap["id"], "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["merkle_root"] == snap["merkle_root"]


def test_auditor_snippet_in_the_docs_verifies_a_served_proof(api):
    """The dozen lines docs/snapshots.md gives auditors, run as printed, on a real proof."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "snapshots.md").read_text()
    snippet = doc.split("<!-- auditor-verifier -->")[1].split("```python")[1].split("```")[0]
    ns: dict = {}
    exec(compile(snippet, "docs/snapshots.md", "exec"), ns)  # noqa: S102  (our own docs)
    ds, _ = approved_dataset(api, 11)
    snap = freeze(api, ds, validation_fraction=0.3)
    recs, _ = export_records(api, snap["id"])
    proof = _proof(api, snap["id"], example_id=recs[7]["example_id"]).json()
    assert ns["verify"](proof, snap["merkle_root"], recs[7]["content"]) is True
    proof["leaf_index"] = (proof["leaf_index"] + 3) % proof["tree_size"]
    assert ns["verify"](proof, snap["merkle_root"], recs[7]["content"]) is False


@pytest.mark.parametrize("n", [1, 2, 3, 8, 33])
def test_database_root_matches_the_reference_at_small_sizes(api, n):
    ds, _ = approved_dataset(api, n)
    snap = freeze(api, ds, validation_fraction=0.25)
    recs, _ = export_records(api, snap["id"])
    lines = sorted(f"{r['content_sha256']} {r['split']}".encode() for r in recs)
    assert snap["merkle_root"] == _mth(lines).hex()
    p = _proof(api, snap["id"], example_id=recs[-1]["example_id"]).json()
    assert merkle.verify_proof(p)[0] and p["audit_path"] == [h.hex() for h in _path(p["leaf_index"], lines)]


def test_large_freezes_get_their_root_right_after_the_response(api, monkeypatch):
    """PostgreSQL above MERKLE_AT_FREEZE_MAX_MEMBERS: the freeze answers without the root, which
    follows after the commit (the same value a freeze would have stored) and is audited."""
    from app.core.config import get_settings
    from app.snapshots import freeze as snapshot_freeze

    monkeypatch.setattr(snapshot_freeze, "MERKLE_AT_FREEZE_MAX_MEMBERS", 0)
    ds, _ = approved_dataset(api, 6)
    snap = freeze(api, ds, validation_fraction=0.5)
    recs, _ = export_records(api, snap["id"])
    want = _mth(sorted(f"{r['content_sha256']} {r['split']}".encode() for r in recs)).hex()
    if get_settings().is_sqlite:
        assert snap["merkle_root"] == want  # SQLite computes it in the freeze's own pass, always
        return
    assert snap["merkle_root"] is None
    listed = api.as_("auditor").get("/v1/snapshots", params={"dataset": ds["id"]}).json()["items"]
    assert listed[0]["merkle_root"] == want  # filled after the response, before anyone asked
    assert api.as_("auditor").get(f"/v1/snapshots/{snap['id']}").json()["merkle_root"] == want
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]
    p = _proof(api, snap["id"], example_id=recs[0]["example_id"]).json()
    assert p["merkle_root"] == want and merkle.verify_proof(p)[0]


def test_simultaneous_first_reads_compute_and_audit_the_root_once(pg_api):
    import threading

    ds, _ = approved_dataset(pg_api, 9)
    snap = freeze(pg_api, ds, validation_fraction=0.3)
    sql("UPDATE snapshots SET merkle_root = NULL")
    barrier = threading.Barrier(6)
    roots: list = []

    def read():
        barrier.wait()
        roots.append(pg_api.as_("auditor").get(f"/v1/snapshots/{snap['id']}").json()["merkle_root"])

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert roots == [snap["merkle_root"]] * 6
    from sqlalchemy import text

    from app.core.db import session_scope

    with session_scope() as s:
        audited = s.execute(text("SELECT count(*) FROM audit_events WHERE action = 'snapshot.merkle_root' "
                                 "AND entity_id = :sid"), {"sid": snap["id"]}).scalar_one()
    assert audited == 1
