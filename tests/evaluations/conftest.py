from __future__ import annotations

import pytest


@pytest.fixture
def eval_dispatched(dispatched: list[tuple], monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records what would go to the trainer worker, so these tests drive its protocol by hand."""
    from app.core import jobs

    sent: list[tuple] = []
    monkeypatch.setitem(jobs.LOCAL_HANDLERS, "pedigree.evaluate.run", lambda *a: sent.append(a))
    return sent
