"""Training canaries (issue 17; Carlini et al., "The Secret Sharer"): synthetic sequences with a random
secret, planted in a run's training stream so the `memorization` suite can measure exposure.

The secrets are drawn here with `secrets` and sealed with the PII vault's key ring, each bound to its run
and canary id, so a copied ciphertext does not open elsewhere. Only the trainer role ever receives them
in clear (the run it trains, the evaluation it runs); the model card and every other view name the ids,
template and repetition counts only.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.models.training import TrainingCanary
from app.pii import service as pii
from app.pii import vault

SPACE = {"kind": "digits", "length": 9}


def _aad(run_id: uuid.UUID, canary_id: str) -> str:
    return f"canary:{run_id}:{canary_id}"


def draw(session: Session, *, run_id: uuid.UUID, count: int, repetitions: list[int]) -> None:
    ring = pii.key_ring(session)
    rows = []
    for i in range(count):
        cid = f"c{i:04d}"
        secret = "".join(secrets.choice("0123456789") for _ in range(SPACE["length"]))
        sealed = ring.seal(secret, aad=_aad(run_id, cid))
        # The id in the text keeps two canaries' prefixes apart: each secret is ranked against its own.
        rows.append({"run_id": run_id, "canary_id": cid, "template": f"canary {cid}: my secret number is {{secret}}",
                     "space": SPACE, "repetitions": repetitions[i % len(repetitions)], "key_id": sealed.key_id,
                     "ciphertext": sealed.blob})
    if rows:
        session.execute(insert(TrainingCanary), rows)


def _rows(session: Session, run_id: uuid.UUID) -> list[TrainingCanary]:
    return list(session.scalars(select(TrainingCanary).where(TrainingCanary.run_id == run_id)
                                .order_by(TrainingCanary.canary_id)))


def public(session: Session, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """What anyone reading the run or its model card sees: never the secret."""
    return [{"id": c.canary_id, "template": c.template, "space": c.space, "repetitions": c.repetitions}
            for c in _rows(session, run_id)]


def with_secrets(session: Session, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """For the trainer role only (the training spec, the evaluation spec)."""
    ring = pii.key_ring(session)
    return [{"id": c.canary_id, "template": c.template, "space": c.space, "repetitions": c.repetitions,
             "secret": ring.open(vault.Sealed(c.key_id, c.ciphertext), aad=_aad(run_id, c.canary_id))}
            for c in _rows(session, run_id)]
