"""Encryption at rest for raw (pre-scrub) text: AES-256-GCM under a key ring.

* Keys come from `PEDIGREE_PII_VAULT_KEYS` ("kid:base64key,kid:base64key"; the first encrypts, all decrypt),
  so a key can be rotated by prepending a new one and re-encrypting at leisure (`rotate`). Without it,
  a deployment derives one from PEDIGREE_SECRET_KEY (with a warning; see `load_key_ring`).
* Each ciphertext stores the id of its key, and is bound to its row by associated data (the example and
  revision ids): a ciphertext copied onto another row does not decrypt.
* The embedded default keeps its key in a file under ./var and warns; it creates that file only while the
  vault is empty. A key that encrypted stored rows and is gone is a start-up error (`check_ring`), never a
  silent fallback to storing or showing plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

NONCE_BYTES = 12


class VaultError(RuntimeError):
    pass


class VaultKeyMissing(VaultError):
    """A stored ciphertext names a key the ring does not hold (lost or not configured)."""


class VaultIntegrityError(VaultError):
    """The ciphertext was altered, or belongs to another row."""


def key_id_for(key: bytes) -> str:
    # Derived from the key itself so two deployments configured with the same key agree on its id, and a
    # typo in a configured id cannot point at the wrong key.
    return hashlib.sha256(b"pedigree-vault-key-id:" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Sealed:
    key_id: str
    blob: bytes  # nonce || ciphertext+tag


class KeyRing:
    def __init__(self, keys: list[bytes]):
        if not keys:
            raise VaultError("the vault key ring is empty")
        for k in keys:
            if len(k) != 32:
                raise VaultError("vault keys must be 32 bytes (AES-256); generate one with `python -c "
                                 "'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'`")
        self._keys = {key_id_for(k): AESGCM(k) for k in keys}
        self.primary_id = key_id_for(keys[0])

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def seal(self, plaintext: str, *, aad: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        ct = self._keys[self.primary_id].encrypt(nonce, plaintext.encode("utf-8"), aad.encode())
        return Sealed(self.primary_id, nonce + ct)

    def open(self, sealed: Sealed, *, aad: str) -> str:
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise VaultKeyMissing(
                f"vault key {sealed.key_id} is not in the key ring; raw text encrypted with it cannot be read"
            )
        try:
            return aead.decrypt(sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:], aad.encode()).decode()
        except InvalidTag as exc:
            raise VaultIntegrityError("vault ciphertext failed authentication (altered or moved)") from exc

    def rotate(self, sealed: Sealed, *, aad: str) -> Sealed:
        """Re-encrypt under the primary key (after a new key was prepended to the ring)."""
        if sealed.key_id == self.primary_id:
            return sealed
        return self.seal(self.open(sealed, aad=aad), aad=aad)

    def check_ring(self, stored_key_ids: Iterable[str]) -> None:
        """Fail start-up when stored rows need a key the ring lacks."""
        missing = sorted(set(stored_key_ids) - set(self._keys))
        if missing:
            raise VaultKeyMissing(
                f"the PII vault holds raw text encrypted with key(s) {missing}, which the configured key ring "
                "does not contain. Restore the key (PEDIGREE_PII_VAULT_KEYS or the key file) before starting; "
                "the service will not run without it."
            )


def parse_keys(value: str) -> list[bytes]:
    keys = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        _, _, b64 = item.rpartition(":")
        try:
            keys.append(base64.b64decode(b64, validate=True))
        except ValueError as exc:
            raise VaultError("PEDIGREE_PII_VAULT_KEYS: each entry must be [kid:]base64(32 bytes)") from exc
    return keys


def derive_key(secret: str) -> bytes:
    """A vault key derived from the service secret (HKDF-SHA256, own label, so it never equals the secret)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pedigree-pii-vault-v1").derive(
        secret.encode()
    )


def load_key_ring(
    *, configured: str | None, key_file: Path | None, embedded: bool, vault_empty: bool | None = None,
    secret: str | None = None,
) -> KeyRing:
    """The key ring, by precedence:

    * `configured` (PEDIGREE_PII_VAULT_KEYS): those keys, newest first; the key derived from `secret` is
      appended as decrypt-only, so rows written before explicit keys were configured stay readable;
    * embedded mode: a key file, created (with a warning) while the vault is empty;
    * otherwise: the key derived from the service secret, with a warning (a production deployment should
      keep the two apart, so that rotating one does not rotate the other).

    `vault_empty` (None = unknown) guards the one dangerous case: creating a fresh key file while rows
    encrypted under the old, lost one exist. Whatever the source, `KeyRing.check_ring` then refuses to
    start when stored rows name a key the ring lacks.
    """
    derived = [derive_key(secret)] if secret else []
    if configured:
        return KeyRing(parse_keys(configured) + derived)
    if not embedded:
        if not derived:
            raise VaultError(
                "PEDIGREE_PII_VAULT_KEYS is not set. Outside the embedded mode the raw-text vault needs a key "
                "from the environment (comma-separated base64 32-byte keys, newest first)."
            )
        log.warning("PII vault key derived from PEDIGREE_SECRET_KEY; set PEDIGREE_PII_VAULT_KEYS to keep the "
                    "vault key apart from the service secret")
        return KeyRing(derived)
    if key_file is None:
        raise VaultError("no vault key configured and no key file given")
    if key_file.exists():
        data = json.loads(key_file.read_text())
        return KeyRing([base64.b64decode(k) for k in data["keys"]])
    if vault_empty is False:
        raise VaultKeyMissing(
            f"the vault key file {key_file} is missing but the vault holds encrypted raw text; restore the file "
            "(a new key would make that text unreadable)"
        )
    key = secrets.token_bytes(32)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": [base64.b64encode(key).decode()]}, fh)
    log.warning(
        "created a PII vault key at %s (embedded mode). Back it up: without it the raw text of ingested "
        "examples cannot be read. Production sets PEDIGREE_PII_VAULT_KEYS instead.",
        key_file,
    )
    return KeyRing([key])
