"""Run Alembic programmatically (embedded mode, CLI, tests): the schema always comes from migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


def upgrade_head() -> None:
    command.upgrade(alembic_config(), "head")
