"""Fixtures: gateways served by uvicorn on loopback over the synthetic backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from lorax_gateway import GatewaySettings, create_app
from lorax_gateway.backends.base import EngineBackend
from lorax_gateway.backends.synthetic import SyntheticBackend, SyntheticConfig
from lorax_gateway.testing import Served, serve

ADAPTERS = ("org/public", "acme/private", "globex/secret")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def synthetic(**kwargs: object) -> SyntheticBackend:
    """A synthetic backend knowing the test adapters."""
    return SyntheticBackend(SyntheticConfig(adapters=ADAPTERS, **kwargs))  # type: ignore[arg-type]


ServeFactory = Callable[..., Served]


@pytest.fixture
def gateway_factory() -> Iterator[ServeFactory]:
    """Start gateways with given settings/backend; all are stopped at teardown."""
    with ExitStack() as stack:

        def start(
            settings: GatewaySettings | None = None, backend: EngineBackend | None = None
        ) -> Served:
            engine = backend or synthetic()
            app = create_app(settings or GatewaySettings(backend="synthetic"), engine)
            return stack.enter_context(serve(app, engine))

        yield start


@pytest.fixture(scope="module")
def gateway() -> Iterator[Served]:
    """One shared gateway over a synthetic backend, auth off."""
    engine = synthetic()
    with serve(create_app(GatewaySettings(backend="synthetic"), engine), engine) as served:
        yield served
