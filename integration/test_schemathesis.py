"""Property-based requests from the gateway's own ``/openapi.json`` (schemathesis).

Every operation is called with generated bodies, valid and invalid: no answer may be a 5xx, and
every answer must match what the document declares. The gateway runs as its own process in front
of the synthetic engine, so thousands of generations fit the CI budget; what is under test here
is the gateway's validation and its document, not the model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from .conftest import Process


@pytest.fixture(scope="module")
def synthetic_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    proc = Process(
        [
            sys.executable,
            "-m",
            "lorax_gateway.cli",
            "serve",
            "--backend",
            "synthetic",
            "--backend-option",
            "adapters=org/adapter",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
        tmp / "gateway.log",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api_schema(synthetic_gateway: Process) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{synthetic_gateway.url}/openapi.json")


#: Checks left out because the gateway's OpenAPI document is incomplete (reported, not hidden):
#: it lists 200 and 400 only (not 401/404/413/422/424/429/503); its ``response_format`` schema
#: allows extra keys that validation then refuses with 422; and it declares ``application/json``
#: for the answers that are SSE (``/generate_stream``, ``stream: true`` on ``/`` and
#: ``/v1/completions``). Every other check runs (no 5xx, response bodies against the document,
#: headers), and every 4xx must have the error shape.
UNDOCUMENTED = [status_code_conformance, positive_data_acceptance, content_type_conformance]


#: Hypothesis' health checks are about generation speed and filtering, not about the server.
HEALTH_CHECKS = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


def test_openapi_conformance(api_schema: OpenApiSchema) -> None:
    # schemathesis' own pytest integration (``from_fixture``) does not run under pytest 9, so
    # each operation gets its own hypothesis test here.
    results = list(api_schema.get_all_operations())
    invalid = [r.err() for r in results if isinstance(r, Err)]
    assert not invalid, invalid  # every operation of the document can be generated for
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,  # one fixed set of examples: a CI result never depends on a seed
            suppress_health_check=HEALTH_CHECKS,
        )
        def check(case: schemathesis.Case) -> None:
            excluded = UNDOCUMENTED
            if case.path == "/generate_stream" or (
                isinstance(case.body, dict) and case.body.get("stream") is True  # pyright: ignore[reportUnknownMemberType]
            ):
                # An SSE answer is served as application/json (a gateway defect, reported), so
                # its body cannot be checked against the JSON schema.
                excluded = [*UNDOCUMENTED, response_schema_conformance]
            response = case.call_and_validate(timeout=30, excluded_checks=excluded)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body["error"], str), body
                assert isinstance(body["error_type"], str), body

        check()
