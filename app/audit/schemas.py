"""Response bodies of the audit API (docs/security.md); app/core/schemas.py says how they relate to what
the routes return."""

from __future__ import annotations

from pydantic import Field

from app.core.schemas import IsoTime, Items, JsonObject, Out


class VerifyOut(Out):
    ok: bool
    events: int = Field(description="events in the chain")
    first_bad_event: int | None = Field(description="seq of the first event that fails its hash")
    reason: str | None
    mode: str = Field(description="incremental (from the checkpoint) or full")
    verified_from: int = Field(description="the checkpoint this run resumed after; 0 from the genesis")
    checked: int = Field(description="events hashed by this run")


class AuditEventRow(Out):
    seq: int
    occurred_at: IsoTime
    actor: str
    action: str
    entity_type: str
    entity_id: str | None
    payload: JsonObject
    workspace_id: str | None = Field(None, description="the workspace of what the event is about (part of its hash "
                                                       "when set); null for events about no workspace's data")
    prev_hash: str
    hash: str


class AuditEventList(Items[AuditEventRow]):
    """Paged by `seq`: pass `next_after` back as `after`; null on the last page."""

    next_after: int | None
