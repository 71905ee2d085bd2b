"""Single sign-on for the web pages (issue 21, scope 4): people signed in through an OpenID provider."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin, JSONType


class SsoIdentity(IdMixin, CreatedAtMixin, Base):
    """A person of an identity provider, (issuer, subject), and the key that acts for them. The key is an
    ordinary api_keys row whose secret was never shown to anyone, so reviews, leases, four eyes and the
    workspace checks treat a person exactly like a reviewer key; its memberships are rewritten from the
    person's groups at every sign-in. Revoking that key locks the person out."""

    __tablename__ = "sso_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    groups: Mapped[list] = mapped_column(JSONType, default=list)
    last_sign_in_at: Mapped[dt.datetime | None]


class SsoLogin(Base):
    """One authorization request in flight: its state, nonce and PKCE verifier, kept server-side and
    deleted by the callback that uses it, so a replayed callback (same state) finds nothing."""

    __tablename__ = "sso_logins"

    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    next_path: Mapped[str] = mapped_column(Text, default="/review")
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class WebSession(IdMixin, CreatedAtMixin, Base):
    """A signed-in person's page session. The cookie holds a random token; only its sha256 is stored, so
    a copy of this table signs nobody in. Sign-out sets `revoked_at`; every request reads the row.
    `id_token` is the provider's ID token of the sign-in, kept only as the `id_token_hint` of the
    provider-side sign-out (RP-initiated logout) and cleared by it."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    identity_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sso_identities.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    revoked_at: Mapped[dt.datetime | None]
    id_token: Mapped[str | None] = mapped_column(Text)
