"""Response types: tolerant of what newer servers add, strict about what must be there."""

from __future__ import annotations

import pydantic
import pytest

import lorax
from lorax import FinishReason, Response, StreamResponse
from lorax.types import Details


def test_extra_fields_are_kept_at_every_level() -> None:
    response = Response.model_validate(
        {
            "generated_text": "hi",
            "cost": 0.01,
            "details": {
                "finish_reason": "stop_sequence",
                "generated_tokens": 1,
                "skipped_tokens": 0,
                "tokens": [
                    {"id": 1, "text": "hi", "logprob": -1.0, "special": False, "skipped": False}
                ],
            },
        }
    )
    assert response.model_extra == {"cost": 0.01}
    assert response.details is not None
    assert response.details.model_extra == {"skipped_tokens": 0}
    assert response.details.tokens[0].model_extra == {"skipped": False}
    assert response.details.finish_reason is FinishReason.StopSequence


def test_an_unknown_finish_reason_is_kept_as_text() -> None:
    details = Details.model_validate({"finish_reason": "tool_call", "generated_tokens": 3})
    assert details.finish_reason == "tool_call"
    assert not isinstance(details.finish_reason, FinishReason)


def test_required_fields_are_required() -> None:
    with pytest.raises(pydantic.ValidationError):
        StreamResponse.model_validate({"generated_text": "no token"})
    with pytest.raises(pydantic.ValidationError):
        Response.model_validate({"details": None})


def test_alternative_tokens_and_best_of() -> None:
    response = Response.model_validate(
        {
            "generated_text": "a",
            "details": {
                "finish_reason": "length",
                "generated_tokens": 1,
                "tokens": [
                    {
                        "id": 1,
                        "text": "a",
                        "logprob": -0.1,
                        "special": False,
                        "alternative_tokens": [{"id": 2, "text": "b", "logprob": -2.0}],
                    }
                ],
                "best_of_sequences": [
                    {"generated_text": "c", "finish_reason": "eos_token", "generated_tokens": 1}
                ],
            },
        }
    )
    assert response.details is not None
    alternatives = response.details.tokens[0].alternative_tokens
    assert alternatives is not None
    assert alternatives[0].text == "b"
    best_of = response.details.best_of_sequences
    assert best_of is not None
    assert best_of[0].finish_reason is FinishReason.EndOfSequenceToken


def test_upstream_import_paths_still_work() -> None:
    from lorax.client import AsyncClient, Client
    from lorax.errors import (
        BadRequestError,
        GenerationError,
        IncompleteGenerationError,
        NotFoundError,
        OverloadedError,
        RateLimitExceededError,
        ShardNotReadyError,
        ShardTimeoutError,
        UnknownError,
        ValidationError,
    )
    from lorax.types import MergedAdapters, Parameters, Request, ResponseFormat

    assert lorax.Client is Client
    assert lorax.AsyncClient is AsyncClient
    assert lorax.MergedAdapters is MergedAdapters
    assert lorax.ResponseFormat is ResponseFormat
    for error in (
        BadRequestError,
        GenerationError,
        IncompleteGenerationError,
        NotFoundError,
        OverloadedError,
        RateLimitExceededError,
        ShardNotReadyError,
        ShardTimeoutError,
        UnknownError,
        ValidationError,
    ):
        assert issubclass(error, lorax.LoraxError)
    assert Request(inputs="x", parameters=Parameters()).wire_body() == {
        "inputs": "x",
        "parameters": Parameters().model_dump(exclude_none=True),
    }


# The keyword arguments of upstream lorax-client 0.6's Client.generate / generate_stream: code
# written for it must run unchanged.
UPSTREAM_GENERATE = {
    "adapter_id", "adapter_source", "merged_adapters", "api_token", "do_sample", "max_new_tokens",
    "ignore_eos_token", "best_of", "repetition_penalty", "return_full_text", "seed",
    "stop_sequences", "temperature", "top_k", "top_p", "truncate", "typical_p", "watermark",
    "response_format", "decoder_input_details", "return_k_alternatives", "details",
}  # fmt: skip
UPSTREAM_STREAM = UPSTREAM_GENERATE - {"best_of", "decoder_input_details"}


def test_upstream_keyword_arguments_are_all_accepted() -> None:
    from lorax.parameters import GenerateParams, StreamParams

    assert GenerateParams.__optional_keys__ >= UPSTREAM_GENERATE
    assert StreamParams.__optional_keys__ >= UPSTREAM_STREAM


def test_sync_and_async_clients_have_the_same_interface() -> None:
    import inspect

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync, async_ = public(lorax.Client), public(lorax.AsyncClient)
    assert sync.keys() == async_.keys()
    assert {"generate", "generate_stream", "tokenize", "health", "info", "models"} <= sync.keys()
    for name, signature in sync.items():
        assert list(signature.parameters) == list(async_[name].parameters), name
    init_sync = inspect.signature(lorax.Client.__init__).parameters
    init_async = inspect.signature(lorax.AsyncClient.__init__).parameters
    assert list(init_sync) == list(init_async)
    # Upstream's positional order.
    assert list(init_sync)[1:7] == [
        "base_url", "headers", "cookies", "timeout", "session", "max_session_retries",
    ]  # fmt: skip
