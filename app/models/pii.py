"""PII scrubbing: the encrypted raw-text vault, one row per scrub, and the findings with reviewer verdicts."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, SmallInteger, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin

VERDICTS = ("confirmed", "false_positive", "added")


class PiiVaultEntry(IdMixin, CreatedAtMixin, Base):
    """The raw content of a revision that was scrubbed, encrypted (app/pii/vault.py). Once it is here, the
    revision row itself keeps only a marker and its hash. Erasure deletes these rows."""

    __tablename__ = "pii_vault"
    __table_args__ = (UniqueConstraint("revision_id"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class PiiScrub(IdMixin, CreatedAtMixin, Base):
    """One scrub of one source revision. The unique constraint is what makes a redelivered batch, or two
    workers racing on it, produce one scrubbed revision and never two."""

    __tablename__ = "pii_scrubs"
    __table_args__ = (
        UniqueConstraint("example_id", "source_revision_id"),
        Index("ix_pii_scrubs_dataset_id_source_sha256", "dataset_id", "source_sha256"),
    )

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    source_revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    source_sha256: Mapped[str] = mapped_column(String(64))
    # The scrubbed revision; equal to the source when nothing was found.
    result_revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    findings: Mapped[int] = mapped_column(Integer, default=0)
    # {"oversize": {path: chars}, "languages": {path: "non_en"}, "mode": "pattern_only"}
    flags: Mapped[dict] = mapped_column(default=dict)
    engine: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    # The recognizer set's version (app/pii/fingerprint.py); NULL on scrubs made before it was recorded.
    recognizers: Mapped[str | None] = mapped_column(String(64))


class PiiFinding(IdMixin, CreatedAtMixin, Base):
    """A span replaced in `revision_id` (or, verdict `added`, one a reviewer says was missed). Offsets and
    types only: the raw value lives in the vault."""

    __tablename__ = "pii_findings"
    __table_args__ = (
        Index("ix_pii_findings_dataset_id_verdict", "dataset_id", "verdict"),
        Index("ix_pii_findings_dataset_id_value_token", "dataset_id", "value_token"),
    )

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"), index=True)
    source_revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    field_path: Mapped[str] = mapped_column(String(200))
    entity_type: Mapped[str] = mapped_column(String(64))
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    scrubbed_start: Mapped[int] = mapped_column(Integer)
    scrubbed_end: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    recognizer: Mapped[str] = mapped_column(String(100))
    operator: Mapped[str] = mapped_column(String(20))
    engine: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str | None] = mapped_column(String(20))
    verdict_by: Mapped[str | None] = mapped_column(String(200))
    verdict_at: Mapped[dt.datetime | None]
    # HMAC of the replaced value (app/pii/tokens.py), never the value: equal values give equal tokens across
    # examples, so dedup compares "France" and "Japan" as different words and the report counts values.
    # Null on findings made before tokens existed and after erasure.
    value_token: Mapped[str | None] = mapped_column(String(16))
    # Words in the value (1 for "France", 3 for "F. Scott Fitzgerald"): the view writes that many words for
    # it, so a long name weighs in the comparison what it weighs in the text. Its length, never its words.
    value_words: Mapped[int | None] = mapped_column(SmallInteger)
