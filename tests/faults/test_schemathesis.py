"""Schemathesis over the served OpenAPI document: generated requests to every operation, as an admin
(every operation reaches its handler) and as an auditor (a read-only role), must never get a 5xx.

In-process (ASGI) against one SQLite database holding a real dataset, snapshots, a registered model
and the rest, so that half of the cases carry real ids in their path and reach past the lookup into the
service. Deterministic (derandomised) and bounded: a few examples per operation, well under 90 s.
"""

from __future__ import annotations

import time
import traceback

import pytest

from tests.security.test_roles import world  # noqa: F401  (real ids for path parameters)
from tests.training.conftest import artifact_root, dispatched  # noqa: F401

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

import os
EXAMPLES = int(os.environ.get("PEDIGREE_TEST_SCHEMATHESIS_EXAMPLES", "8"))
# CI runs the same cases every time; PEDIGREE_TEST_SCHEMATHESIS_RANDOM=1 explores new ones.
DERANDOMIZE = not os.environ.get("PEDIGREE_TEST_SCHEMATHESIS_RANDOM")
BACKEND = os.environ.get("PEDIGREE_TEST_SCHEMATHESIS_DB", "postgresql")
BUDGET_S = 90
# Real ids are never put in these: a generated request would revoke the test's own keys.
NEVER_REAL = {("DELETE", "/v1/keys/{key_id}")}


def _runner(op, headers: dict[str, str], real_ids: dict, calls: list[int]):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)),
           real=st.booleans())
    def run(case, real):
        if real and case.path_parameters and (op.method.upper(), op.path) not in NEVER_REAL:
            for name in case.path_parameters:
                value = real_ids.get(name.split(":")[0])
                if isinstance(value, str):
                    case.path_parameters[name] = value
        calls[0] += 1
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    return run


@pytest.mark.parametrize("db", [BACKEND], indirect=True)
def test_no_operation_answers_a_server_error(api, world):  # noqa: F811
    from app.main import create_app

    real_ids, _ = world
    app = create_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 60
    failures: list[str] = []
    calls = [0]
    t0 = time.monotonic()
    for op in operations:
        for role in ("admin", "auditor"):
            try:
                _runner(op, {"Authorization": f"Bearer {api.keys[role]}"}, real_ids, calls)()
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every failure, not the first
                failures.append(f"{op.method.upper()} {op.path} as {role}: {type(exc).__name__}: "
                                f"{''.join(traceback.format_exception(exc))[-2500:]}")
    took = time.monotonic() - t0
    print(f"\nschemathesis: {len(operations)} operations, {calls[0]} requests in {took:.1f}s")
    assert not failures, "\n\n".join(failures)
    assert took < BUDGET_S * max(1, EXAMPLES / 8), f"took {took:.0f}s, budget {BUDGET_S}s"
