"""pii: erasure requests filed before selectors were pseudonymised keep no identifier in clear.

A request's selector names the person being erased (`source_refs`, metadata values); it was stored and
shown as given. Each stored selector gets the form new requests are stored in: every ref and every
non-boolean metadata value as its provenance pseudonym `hmac:<16 hex>` (docs/pii.md, "Who sees what").
The audit events those requests wrote are hash-chained and stay as they are.

Revision ID: pii05
Revises: pii04
Create Date: 2026-12-03 07:30:00
"""

import hashlib
import hmac
import json
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = 'pii05'
down_revision: str | None = 'pii04'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Frozen copy of app/examples/privacy.py's pseudonym: a migration must not change with the code.
def _pseudonym(key: bytes, value) -> str:
    raw = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return "hmac:" + hmac.new(key, raw.encode(), hashlib.sha256).hexdigest()[:16]


def _masked(key: bytes, value):
    if value is None or isinstance(value, bool) or (isinstance(value, str) and value.startswith("hmac:")):
        return value
    return _pseudonym(key, value)


def upgrade() -> None:
    # Hand-written (data only). The key comes from the service secret, as at run time.
    from app.core.config import get_settings

    secret = get_settings().secret_key
    key = hmac.new(secret.encode(), b"pedigree-provenance-pseudonym-v1", hashlib.sha256).digest()
    conn = op.get_bind()
    pg = conn.dialect.name == "postgresql"
    update = sa.text("UPDATE erasure_requests SET selector = CAST(:s AS JSONB) WHERE id = :id" if pg
                     else "UPDATE erasure_requests SET selector = :s WHERE id = :id")
    for req_id, selector in conn.execute(sa.text("SELECT id, selector FROM erasure_requests")).all():
        selector = json.loads(selector) if isinstance(selector, str) else dict(selector or {})
        new = dict(selector)
        if isinstance(new.get("source_refs"), list):
            new["source_refs"] = sorted({_masked(key, r) for r in new["source_refs"]})
        if isinstance(new.get("metadata"), dict):
            new["metadata"] = {k: _masked(key, v) for k, v in new["metadata"].items()}
        if new != selector:
            conn.execute(update, {"s": json.dumps(new), "id": req_id})


def downgrade() -> None:
    # The identifiers are gone on purpose; nothing to restore.
    pass
