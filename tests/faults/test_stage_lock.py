"""The stage runner's row lock against the locks other writers take on examples."""

import orjson
import psycopg
import pytest
from sqlalchemy import update

from app.core.db import session_scope
from app.models.example import Example
from app.pipeline import jobs as pipeline
from tests.factories import new_dataset

pytestmark = [pytest.mark.postgres]


def test_a_foreign_key_share_lock_does_not_make_the_stage_skip_the_row(pg_api, pg):
    ds = new_dataset(pg_api)
    r = pg_api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import",
                                   content=orjson.dumps({"instruction": "q", "output": "a"}),
                                   headers={"Content-Type": "application/x-ndjson"})
    assert r.json()["accepted"] == 1
    with session_scope() as s:  # back at the first stage, as if its message were just delivered
        s.execute(update(Example).values(stage="quality", status="ingested"))
        (ex_id,) = s.execute(Example.__table__.select().with_only_columns(Example.id)).one()
    # What a concurrent import does to a row it links an exact duplicate to: the INSERT's foreign-key
    # check holds KEY SHARE on the referenced example until that import commits.
    with psycopg.connect(pg.replace("postgresql+psycopg://", "postgresql://")) as other:
        other.execute("SELECT 1 FROM examples WHERE id = %s FOR KEY SHARE", (ex_id,))
        assert pipeline.run_stage("quality", [ex_id]) == 1
        other.rollback()
    with session_scope() as s:  # moved on (in-process, the later stages ran right after it)
        assert s.get(Example, ex_id).stage != "quality"
