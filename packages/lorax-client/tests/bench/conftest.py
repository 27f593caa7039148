"""Fixtures of lorax-bench's tests: the stub server (``lorax.bench.stub``) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lorax.bench.stub import StubBehaviour, StubServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def stub_server() -> Iterator[StubServer]:
    server = StubServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stub(stub_server: StubServer) -> StubServer:
    """The module's stub server, with default behaviour and an empty record."""
    stub_server.behaviour = StubBehaviour()
    stub_server.reset()
    return stub_server
