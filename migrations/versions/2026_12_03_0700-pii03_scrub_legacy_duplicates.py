"""pii: exact duplicates ingested before they went through the scrub are sent back to it.

Until now ingest parked an exact duplicate outside the pipeline, so its ingest revision kept the raw text
in `example_revisions`, readable through every view. This data migration puts each such example back at
the `pii` stage (its status stays `duplicate`): from then on every view withholds its content
(`content_withheld: "pii_pending"`), snapshots exclude it, and the pipeline sweeper, which re-enqueues
examples that sit at a stage, has it scrubbed and its raw text moved to the vault like any other.
`updated_at` is left as it was, so the sweeper's first pass already finds them.

Revision ID: pii03
Revises: pipe01
Create Date: 2026-12-03 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'pii03'
down_revision: str | None = 'pipe01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Hand-written (data only). A duplicate whose current revision is still its ingest revision and that no
    # scrub ever saw; one scrubbed since (a future re-run) has a pii_scrubs row and is left alone.
    op.execute(
        "UPDATE examples SET stage = 'pii' "
        "WHERE status = 'duplicate' AND stage IS NULL "
        "AND EXISTS (SELECT 1 FROM example_revisions r WHERE r.id = examples.current_revision_id "
        "            AND r.reason = 'ingest') "
        "AND NOT EXISTS (SELECT 1 FROM pii_scrubs s WHERE s.example_id = examples.id)"
    )


def downgrade() -> None:
    # Nothing to undo: the examples that are still waiting simply stay at the stage until scrubbed.
    pass
