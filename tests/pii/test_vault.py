from __future__ import annotations

import base64
import logging
import os

import pytest

from app.pii.vault import (
    KeyRing,
    VaultError,
    VaultIntegrityError,
    VaultKeyMissing,
    key_id_for,
    load_key_ring,
    parse_keys,
)

K1, K2 = os.urandom(32), os.urandom(32)


def test_round_trip_and_no_plaintext_in_the_blob():
    ring = KeyRing([K1])
    sealed = ring.seal("John Smith, 212-555-0187", aad="ex1:rev1")
    assert b"John" not in sealed.blob and sealed.key_id == key_id_for(K1)
    assert ring.open(sealed, aad="ex1:rev1") == "John Smith, 212-555-0187"


def test_ciphertext_is_bound_to_its_row_and_tamper_evident():
    ring = KeyRing([K1])
    sealed = ring.seal("secret", aad="ex1:rev1")
    with pytest.raises(VaultIntegrityError):
        ring.open(sealed, aad="ex2:rev9")
    flipped = type(sealed)(sealed.key_id, sealed.blob[:-1] + bytes([sealed.blob[-1] ^ 1]))
    with pytest.raises(VaultIntegrityError):
        ring.open(flipped, aad="ex1:rev1")


def test_rotation_keeps_old_rows_readable_and_rewraps():
    old = KeyRing([K1]).seal("raw", aad="a")
    ring = KeyRing([K2, K1])
    assert ring.open(old, aad="a") == "raw"
    new = ring.rotate(old, aad="a")
    assert new.key_id == key_id_for(K2)
    assert KeyRing([K2]).open(new, aad="a") == "raw"


def test_lost_key_is_an_error_never_plaintext():
    sealed = KeyRing([K1]).seal("raw", aad="a")
    ring = KeyRing([K2])
    with pytest.raises(VaultKeyMissing):
        ring.open(sealed, aad="a")
    with pytest.raises(VaultKeyMissing, match="Restore the key"):
        ring.check_ring([sealed.key_id])
    ring.check_ring([key_id_for(K2)])


def test_keys_from_settings():
    value = f"new:{base64.b64encode(K2).decode()},old:{base64.b64encode(K1).decode()}"
    ring = load_key_ring(configured=value, key_file=None, embedded=False)
    assert ring.primary_id == key_id_for(K2) and set(ring.key_ids) == {key_id_for(K1), key_id_for(K2)}
    with pytest.raises(VaultError):
        parse_keys("kid:not-base64!")
    with pytest.raises(VaultError, match="32 bytes"):
        KeyRing([b"short"])


def test_production_without_keys_refuses(tmp_path):
    with pytest.raises(VaultError, match="PEDIGREE_PII_VAULT_KEYS"):
        load_key_ring(configured=None, key_file=tmp_path / "k.json", embedded=False)


def test_production_key_derived_from_the_secret_stays_readable_after_explicit_keys(caplog):
    with caplog.at_level(logging.WARNING):
        derived = load_key_ring(configured=None, key_file=None, embedded=False, secret="s" * 32)
    assert "derived from PEDIGREE_SECRET_KEY" in caplog.text
    old = derived.seal("raw", aad="a")
    ring = load_key_ring(configured=base64.b64encode(K1).decode(), key_file=None, embedded=False, secret="s" * 32)
    assert ring.primary_id == key_id_for(K1) and ring.open(old, aad="a") == "raw"
    with pytest.raises(VaultKeyMissing):  # a changed secret is a lost key: caught at start-up
        load_key_ring(configured=None, key_file=None, embedded=False, secret="t" * 32).check_ring([old.key_id])


def test_embedded_key_file_created_with_warning_then_reused(tmp_path, caplog):
    path = tmp_path / "var" / "pii-vault.key"
    with caplog.at_level(logging.WARNING):
        ring = load_key_ring(configured=None, key_file=path, embedded=True, vault_empty=True)
    assert "Back it up" in caplog.text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load_key_ring(configured=None, key_file=path, embedded=True, vault_empty=False)
    assert again.primary_id == ring.primary_id


def test_embedded_key_file_lost_while_vault_has_rows(tmp_path):
    with pytest.raises(VaultKeyMissing, match="missing"):
        load_key_ring(configured=None, key_file=tmp_path / "gone.key", embedded=True, vault_empty=False)
    assert not (tmp_path / "gone.key").exists()
