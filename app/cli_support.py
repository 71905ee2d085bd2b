"""What every `pedigree` command module shares: the embedded database brought to the schema head
before a command touches it, and the identity a shell user acts under."""

from __future__ import annotations

import getpass
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.auth import Actor


def prepare_db() -> None:
    """Upgrade the embedded SQLite database to head; a configured PostgreSQL is migrated by its operator."""
    from app.core.config import get_settings

    if get_settings().is_embedded:
        from app.core.migrate import upgrade_head

        upgrade_head()


def cli_actor(role: str = "admin") -> Actor:
    from app.core.auth import Actor

    # Someone with shell access to the database host acts as admin (lineage reads as an auditor); the
    # audit log names them.
    return Actor(key_id=uuid.UUID(int=1), name=f"cli:{getpass.getuser()}", role=role, is_human=True)
