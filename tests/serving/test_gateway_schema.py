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


def test_every_operation_has_its_own_id_and_probes_still_take_head(gw: ServingStack) -> None:
    """Client generators refuse a document with two operations of one id (GET and HEAD /healthz had one)."""
    import httpx

    doc = httpx.get(f"{gw.url}/openapi.json").json()
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values() if "operationId" in op]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for path in ("/healthz", "/readyz"):
        assert httpx.head(f"{gw.url}{path}").status_code == 200
        assert "head" not in doc["paths"][path]


def test_a_transport_error_without_text_is_named_by_its_kind() -> None:
    """httpx's ReadError('') made the explain 503 end in an empty cause."""
    import httpx

    from pyrocast.serving.backends import describe_error

    assert describe_error(httpx.ReadError("")) == "ReadError (no detail given)"
    assert describe_error(httpx.ConnectError("All connection attempts failed")) == "All connection attempts failed"
