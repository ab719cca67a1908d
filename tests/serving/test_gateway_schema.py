"""Property-based requests generated from the gateway's OpenAPI document (schemathesis): never a 5xx."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.serving import ServingStack

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

SKIP = {"/v1/explain"}  # slow (one forward pass per occluded patch) and covered in test_gateway
EXAMPLES = 12


def test_generated_requests_never_get_a_server_error(gw: ServingStack) -> None:
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in SKIP:
            continue
        tested.append(op.label)

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        check()
    assert "POST /v1/predict" in tested and "POST /v1/feedback" in tested
