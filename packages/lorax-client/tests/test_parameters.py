"""Client-side validation: every API.md rule fails before the network."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lorax import MergedAdapters, ResponseFormat, errors

pytestmark = pytest.mark.anyio


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request should have been sent, got {request.url}")


BAD_GENERATE: list[tuple[dict[str, Any], str]] = [
    ({"adapter_id": "a", "merged_adapters": {"ids": ["b"], "weights": [1.0]}}, "at most one"),
    ({"adapter_source": "ftp"}, "adapter_source"),
    ({"merged_adapters": {"ids": [], "weights": []}}, "cannot be empty"),
    ({"merged_adapters": {"ids": ["a", "b"], "weights": [1.0]}}, "same length"),
    (
        {"merged_adapters": {"ids": ["a"], "weights": [1.0], "merge_strategy": "avg"}},
        "merge_strategy",
    ),
    ({"merged_adapters": {"ids": ["a"], "weights": [1.0], "density": 1.5}}, "density"),
    (
        {"merged_adapters": {"ids": ["a"], "weights": [1.0], "majority_sign_method": "x"}},
        "majority",
    ),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"typical_p": 1.0}, "typical_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"seed": -1}, "seed"),
    ({"truncate": 0}, "truncate"),
    ({"return_k_alternatives": -1}, "return_k_alternatives"),
    ({"seed": 2**64}, "seed"),
    ({"stop_sequences": ["ok", ""]}, "stop"),
    ({"best_of": 0}, "best_of"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, "seed"),
    ({"best_of": 2}, "sampling"),
    ({"best_of": 2, "temperature": 0.0}, "sampling"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "needs a `schema`"),
    ({"response_format": {"type": "text", "schema": {}}}, "takes no"),
    ({"top_k": "many"}, "top_k"),
    ({"stop_sequences": "stop"}, "stop"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), BAD_GENERATE)
async def test_generate_rejects_before_sending(
    make_api: Any, kwargs: dict[str, Any], fragment: str
) -> None:
    api = make_api(never_called)
    with pytest.raises(errors.ValidationError) as info:
        await api.call("generate", "hi", **kwargs)
    assert fragment in str(info.value)
    assert not isinstance(info.value, errors.APIError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"best_of": 2, "do_sample": True}, "best_of"), ({"decoder_input_details": True}, "decoder")],
)
async def test_stream_rejects_non_streaming_options(
    make_api: Any, kwargs: dict[str, Any], fragment: str
) -> None:
    api = make_api(never_called)
    # Raised by the call itself, before any iteration.
    with pytest.raises(errors.ValidationError) as info:
        api.client.generate_stream("hi", **kwargs)
    assert fragment in str(info.value)


async def test_empty_prompt_is_rejected(make_api: Any) -> None:
    api = make_api(never_called)
    with pytest.raises(errors.ValidationError, match="inputs"):
        await api.call("generate", "")


async def test_a_typo_in_a_keyword_is_a_type_error(make_api: Any) -> None:
    api = make_api(never_called)
    with pytest.raises(TypeError, match="max_new_token"):
        await api.call("generate", "hi", max_new_token=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"adapter_id": "", "merged_adapters": {"ids": ["a"], "weights": [1.0]}},  # "" = base model
        {"top_p": 1.0},
        {"best_of": 2, "do_sample": True},
        {"best_of": 2, "top_k": 5},
        {"temperature": 0.0},
        {"best_of": 2, "do_sample": True, "temperature": 0.0},
        {"best_of": 2, "typical_p": 0.5},
        {"return_k_alternatives": 0},
        {"seed": 2**64 - 1},
        {"adapter_source": "pbase"},
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_valid_edge_values_are_sent(make_api: Any, kwargs: dict[str, Any]) -> None:
    api = make_api(lambda r: httpx.Response(200, json={"generated_text": ""}))
    await api.call("generate", "hi", **kwargs)
    assert len(api.requests) == 1


def test_types_validate_on_construction_like_upstream() -> None:
    with pytest.raises(errors.ValidationError, match="same length"):
        MergedAdapters(ids=["a"], weights=[0.5, 0.5])
    fmt = ResponseFormat(type="json_object", schema={"type": "object"})
    assert fmt.schema_spec == {"type": "object"}
    assert fmt.model_dump(by_alias=True) == {"type": "json_object", "schema": {"type": "object"}}


def test_api_token_is_not_in_reprs() -> None:
    from lorax.parameters import Parameters

    assert "s3cr3t" not in repr(Parameters(api_token="s3cr3t"))
