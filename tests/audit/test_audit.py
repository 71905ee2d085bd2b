import threading

from sqlalchemy import select, text

from app.audit import service as audit
from app.core.db import get_engine, session_scope
from app.models.audit import AuditEvent
from tests.factories import new_dataset


def _events(n: int) -> None:
    with session_scope() as s:
        for i in range(n):
            audit.record(s, actor="t", action="test.event", entity_type="t", entity_id=i, payload={"i": i, "x": "é"})


def test_chain_verifies_and_tampering_is_named(api):
    new_dataset(api)
    _events(5)
    v = api.as_("auditor").get("/v1/audit/verify").json()
    assert {k: v[k] for k in ("ok", "events", "first_bad_event", "reason")} == {
        "ok": True, "events": 6, "first_bad_event": None, "reason": None}
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    v = api.as_("auditor").get("/v1/audit/verify").json()
    assert v["ok"] is False and v["first_bad_event"] == 3


def test_deleting_an_event_or_the_tail_is_detected(db):
    _events(4)
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 4"))
    with session_scope() as s:
        r = audit.verify(s)
    assert not r.ok and r.first_bad_event == 4
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    with session_scope() as s:
        assert audit.verify(s).first_bad_event == 2


def test_rolled_back_change_leaves_no_event(db):
    try:
        with session_scope() as s:
            audit.record(s, actor="t", action="never", entity_type="t")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with session_scope() as s:
        assert s.scalar(select(AuditEvent).where(AuditEvent.action == "never")) is None
        assert audit.verify(s).ok


def test_concurrent_writers_never_fork_the_chain(pg):
    errors = []

    def writer(k: int) -> None:
        try:
            for i in range(15):
                with session_scope() as s:
                    audit.record(s, actor=f"w{k}", action="race", entity_type="t", entity_id=i)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with session_scope() as s:
        r = audit.verify(s)
        prevs = list(s.scalars(select(AuditEvent.prev_hash)))
    assert r.ok and r.events == 90
    assert len(prevs) == len(set(prevs)), "two events share a predecessor: the chain forked"
