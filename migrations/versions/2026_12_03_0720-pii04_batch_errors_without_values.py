"""pii: line errors stored on ingest batches before errors stopped echoing values are rewritten.

Two messages quoted the offending value (`collected_at 'Jane Roe' is not an ISO 8601 date or datetime`,
`source_ref 'ticket-for-jane@example.com' was already ingested ...`), and every role reads
`GET /v1/ingest-batches/{id}`. Each such stored error gets the message the code writes now (field and
problem, never the value); line, code and field are unchanged.

Revision ID: pii04
Revises: ingest01
Create Date: 2026-12-03 07:20:00
"""

import json
import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'pii04'
down_revision: str | None = 'ingest01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of app/examples/ingest.py's messages: a migration must not change with the code.
_EXAMPLE = re.compile(r"\(example ([0-9a-f-]{36})\)")


def _clean(err: dict) -> dict:
    msg, code, field = err.get("message") or "", err.get("code"), err.get("field")
    if field == "provenance.collected_at" and code == "invalid" and msg.startswith("collected_at "):
        return {**err, "message": "collected_at is not an ISO 8601 date or datetime"}
    if code == "source_ref_conflict" and msg.startswith(("source_ref '", 'source_ref "')):
        if "earlier in this batch" in msg:
            return {**err, "message": "source_ref appears earlier in this batch with different content"}
        m = _EXAMPLE.search(msg)
        example = f" (example {m.group(1)})" if m else ""
        return {**err, "message": f"source_ref was already ingested with different content{example}; "
                                  "send an edit instead"}
    return err


def upgrade() -> None:
    # Hand-written (data only). Batches are one per import, so reading them all is cheap; only rows whose
    # errors quote a value are written back.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, errors FROM ingest_batches WHERE CAST(errors AS TEXT) LIKE "
                                "'%collected_at %' OR CAST(errors AS TEXT) LIKE '%source_ref %'")).all()
    update = sa.text("UPDATE ingest_batches SET errors = CAST(:e AS JSONB) WHERE id = :id"
                     if conn.dialect.name == "postgresql" else "UPDATE ingest_batches SET errors = :e WHERE id = :id")
    for batch_id, errors in rows:
        errors = json.loads(errors) if isinstance(errors, str) else errors
        cleaned = [_clean(e) if isinstance(e, dict) else e for e in errors or []]
        if cleaned != errors:
            conn.execute(update, {"e": json.dumps(cleaned), "id": batch_id})


def downgrade() -> None:
    # The values are gone on purpose; nothing to restore.
    pass
