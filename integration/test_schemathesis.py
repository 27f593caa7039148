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
from schemathesis.specs.openapi.checks import positive_data_acceptance
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


#: The rules a schema-valid request can still break, as their 422 messages name them: limits that
#: only the engine knows (input length, ``truncate``, ``best_of``, stop count), rules across fields
#: (``best_of`` with seed, stream or ``n``; ``decoder_input_details`` with stream; ``adapter_id`` with ``merged_adapters``; equal ``ids``
#: and ``weights``; a ``json_schema`` format without its schema), and the values inside a string
#: or list that validation refuses (an empty stop sequence or prompt list, a non-text content part).
#: Schemathesis' own ``positive_data_acceptance`` would count each as a broken promise.
RULES_BEYOND_THE_SCHEMA = (
    "must be <=",
    "at most",
    "must have less than",
    "best_of > 1",
    "not supported when streaming",
    "cannot be used together",
    "differ in length",
    "needs a 'schema'",
    "needs a schema",
    "must not be empty",
    "unsupported content part type",
)


def _is_positive(case: schemathesis.Case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


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
            response = case.call_and_validate(
                timeout=30, excluded_checks=[positive_data_acceptance]
            )
            if _is_positive(case) and response.status_code == 422:
                # A schema-valid body may break a rule no JSON schema states; any other 422
                # means the document promises more than validation accepts.
                message = response.json()["error"]
                assert any(rule in message for rule in RULES_BEYOND_THE_SCHEMA), message
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body["error"], str), body
                assert isinstance(body["error_type"], str), body

        check()
