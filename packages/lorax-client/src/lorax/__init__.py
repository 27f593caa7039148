"""lorax-client: a typed, sync and async Python client for LoRAX-compatible servers.

A drop-in replacement for upstream `lorax-client`: `from lorax import Client` keeps working, with
the same constructor, methods and keyword arguments.
"""

from lorax import errors, types
from lorax._core import NOT_GIVEN
from lorax._version import __version__
from lorax.client import AsyncClient, Client
from lorax.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    LoraxError,
    ValidationError,
)
from lorax.parameters import GenerateParams, MergedAdapters, ResponseFormat, StreamParams
from lorax.retry import RetryConfig
from lorax.types import (
    Details,
    FinishReason,
    Info,
    Model,
    Response,
    SimpleToken,
    StreamResponse,
    Token,
)

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "Client",
    "Details",
    "FinishReason",
    "GenerateParams",
    "Info",
    "LoraxError",
    "MergedAdapters",
    "Model",
    "Response",
    "ResponseFormat",
    "RetryConfig",
    "SimpleToken",
    "StreamParams",
    "StreamResponse",
    "Token",
    "ValidationError",
    "__version__",
    "errors",
    "types",
]
