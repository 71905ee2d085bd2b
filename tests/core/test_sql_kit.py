"""The SQL kit and the pagination helpers, on both backends."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select

from app.core.db import session_scope
from app.core.errors import ValidationFailed
from app.core.pagination import decode_cursor, encode_cursor, page
from app.core.sql import any_of, aware, chunks, in_chunks, insert_ignore, is_pg, iso
from app.models.base import utcnow
from app.models.training import RegisteredModel

T = RegisteredModel.__table__


def _rows(*names: str, version: int = 0) -> list[dict]:
    return [{"name": n, "latest_version": version, "created_at": utcnow()} for n in names]


def _stored() -> dict[str, int]:
    with session_scope() as s:
        return dict(s.execute(select(T.c.name, T.c.latest_version)).all())


@pytest.mark.parametrize("index_elements", [None, ["name"]])
def test_insert_ignore_keeps_the_first_row_and_adds_the_new_ones(db: str, index_elements) -> None:
    with session_scope() as s:
        assert is_pg(s) == db.startswith("postgresql")
        insert_ignore(s, T, _rows("a", "b", version=1), index_elements)
    with session_scope() as s:
        # Many rows (the unnest path on PostgreSQL), one of them new, and one alone (the plain path).
        insert_ignore(s, T, _rows("a", "b", "c", version=2), index_elements)
        insert_ignore(s, T, _rows("b", version=3), index_elements)
        insert_ignore(s, T, [], index_elements)
    assert _stored() == {"a": 1, "b": 1, "c": 2}


def test_any_of_with_values_and_bound_at_execution(db: str) -> None:
    with session_scope() as s:
        insert_ignore(s, T, _rows("a", "b", "c"))
    with session_scope() as s:
        pg = is_pg(s)
        by_values = s.scalars(select(T.c.name).where(any_of(T.c.name, ["a", "c", "z"], pg=pg))).all()
        stmt = select(T.c.name).where(any_of(T.c.name, name="names", pg=pg))
        by_name = s.scalars(stmt, {"names": ["b"]}).all()
        none = s.scalars(stmt, {"names": []}).all()
    assert sorted(by_values) == ["a", "c"]
    assert by_name == ["b"]
    assert none == []
    with pytest.raises(TypeError):
        any_of(T.c.name, pg=True)


def test_chunks() -> None:
    assert list(chunks(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunks([], 2)) == []
    assert list(in_chunks(range(5), pg=True, size=2)) == [[0, 1, 2, 3, 4]]
    assert list(in_chunks([], pg=True)) == []
    assert list(in_chunks(range(3), pg=False, size=2)) == [[0, 1], [2]]


def test_time_helpers_give_utc_with_its_offset() -> None:
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert iso(naive) == "2026-01-02T03:04:05+00:00"
    cet = dt.datetime(2026, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert aware(cet) == aware(naive) and aware(cet).utcoffset() == dt.timedelta(0)
    assert iso(None) is None


def test_page_cuts_at_the_limit_and_cursors_round_trip() -> None:
    class Row:
        def __init__(self, i: int) -> None:
            self.id = uuid.UUID(int=i)
            self.n = i

    rows = [Row(i) for i in range(1, 5)]
    got, nxt = page(rows, 3)
    assert [r.n for r in got] == [1, 2, 3] and decode_cursor(nxt) == rows[2].id
    assert page(rows, 4) == (rows, None)
    assert page(rows, 2, lambda r: r.n, encode=None)[1] == 2
    assert decode_cursor(encode_cursor(rows[0].id)) == rows[0].id
    with pytest.raises(ValidationFailed):
        decode_cursor("not a cursor!")
