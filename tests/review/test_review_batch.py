"""Set-based decisions: one batch, mixed outcomes, each decision judged as if alone (both databases)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from app.core import auth
from app.core.db import session_scope
from app.core.errors import PedigreeError
from app.models.review import Review
from app.review import decisions
from app.review.jobs import DecisionCommitter
from app.review.schemas import ReviewIn
from tests.factories import get_example as example
from tests.factories import ingest_for_review as ingest
from tests.factories import new_dataset


def actors(n):
    out = []
    with session_scope() as s:
        for i in range(n):
            row, _ = auth.create_key(s, name=f"batch-{i}", role="reviewer")
            out.append(auth.Actor(key_id=row.id, name=row.name, role="reviewer"))
    return out


def test_one_batch_with_mixed_outcomes(api):
    ds = new_dataset(api, review_policy={"required_approvals": 2})
    a, b, c = ingest(api, ds, 3)
    ra, _rb, rc = (uuid.UUID(example(api, e)["revision"]["id"]) for e in (a, b, c))
    x, y = actors(2)
    Rq = decisions.DecisionRequest
    reqs = [
        Rq(a, x, ReviewIn(decision="approve", revision_id=ra)),
        Rq(a, y, ReviewIn(decision="approve", revision_id=ra)),   # second approval in the same batch
        Rq(a, y, ReviewIn(decision="approve", revision_id=ra)),   # a repeat: refused, writes nothing
        Rq(b, x, ReviewIn(decision="approve", revision_id=rc)),   # wrong revision
        Rq(c, x, ReviewIn(decision="reject", revision_id=rc, reason_code="nope")),
        Rq("not-a-uuid", x, ReviewIn(decision="approve", revision_id=rc)),
        Rq(c, y, ReviewIn(decision="reject", revision_id=rc, reason_code="tone")),
    ]
    with session_scope() as s:
        out = decisions.decide_many(s, reqs)
    codes = [r.code if isinstance(r, PedigreeError) else r["example"]["status"] for r in out]
    assert codes == ["pending_review", "approved", "not_pending", "stale_revision", "unknown_reason_code",
                     "not_found", "rejected"]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 3
    assert [example(api, e)["status"] for e in (a, b, c)] == ["approved", "pending_review", "rejected"]


def test_committer_answers_each_decision(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, 4)
    (x,) = actors(1)
    committer = DecisionCommitter()
    futures = [committer.submit(example_id=e, actor=x,
                                data=ReviewIn(decision="approve", revision_id=example(api, e)["revision"]["id"]))
               for e in ids]
    futures.append(committer.submit(example_id=ids[0], actor=x,
                                    data=ReviewIn(decision="approve", revision_id=uuid.uuid4())))
    results = []
    for f in futures:
        try:
            results.append(f.result(timeout=30)["example"]["status"])
        except PedigreeError as e:
            results.append(e.code)
    assert results[:4] == ["approved"] * 4 and results[4] in ("not_pending", "stale_revision")


def test_committer_authenticates_a_batch_of_keys_at_once(api):
    """Keys ride in the batch and are checked with one query; each bad key refuses only its own
    decision (malformed, unknown, wrong role), the others go through."""
    ds = new_dataset(api)
    ids = ingest(api, ds, 2)
    rev = {e: example(api, e)["revision"]["id"] for e in ids}
    committer = DecisionCommitter()
    good = [committer.submit(example_id=e, token=api.keys[k], data=ReviewIn(decision="approve", revision_id=rev[e]))
            for e, k in zip(ids, ("reviewer", "reviewer2"), strict=True)]
    bad = [committer.submit(example_id=ids[0], token=t, data=ReviewIn(decision="approve", revision_id=rev[ids[0]]))
           for t in ("not-a-key", "pdg_000000000000_nope", api.keys["curator"])]
    assert [f.result(timeout=30)["example"]["status"] for f in good] == ["approved", "approved"]
    codes = []
    for f in bad:
        try:
            f.result(timeout=30)
            codes.append("ok")
        except PedigreeError as e:
            codes.append(e.status_code)
    assert codes == [401, 401, 403]
