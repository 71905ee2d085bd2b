from __future__ import annotations

import logging

import pytest

from app.pii.engine import PiiEngine, get_engine


@pytest.fixture(scope="session")
def engine() -> PiiEngine:
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    return get_engine()
