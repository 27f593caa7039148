"""Request bodies and stream parsing of both protocols (sans-IO)."""

from __future__ import annotations

import json

import pytest

from lorax.bench.protocol import Endpoint


def _data(payload: object) -> str:
    return json.dumps(payload)


def test_lorax_body_asks_for_exact_lengths() -> None:
    endpoint = Endpoint("lorax", adapter_source="local")
    assert endpoint.path == "/generate_stream"
    assert endpoint.body("hi there", "adapter-3", 17) == {
        "inputs": "hi there",
        "parameters": {
            "max_new_tokens": 17,
            "ignore_eos_token": True,
            "details": True,
            "adapter_id": "adapter-3",
            "adapter_source": "local",
        },
    }
    assert "adapter_id" not in endpoint.body("hi", None, 1)["parameters"]


def test_openai_body_names_the_adapter_as_model() -> None:
    endpoint = Endpoint("openai", model="base-model")
    assert endpoint.path == "/v1/completions"
    body = endpoint.body("hi", "adapter-1", 9)
    assert body["model"] == "adapter-1"
    assert body["max_tokens"] == 9
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is body["ignore_eos_token"] is True
    assert endpoint.body("hi", None, 9)["model"] == "base-model"


def test_chat_body_sends_the_prompt_as_a_user_message() -> None:
    endpoint = Endpoint("openai-chat", model="base-model")
    assert endpoint.path == "/v1/chat/completions"
    body = endpoint.body("hi", "adapter-1", 9)
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "prompt" not in body
    assert (body["model"], body["max_tokens"], body["stream"]) == ("adapter-1", 9, True)


def test_chat_stream_counts_content_deltas() -> None:
    tracker = Endpoint("openai-chat").tracker()
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    assert tracker.feed(_data(role)) == 0  # the role chunk is not a token
    chunk = {"choices": [{"index": 0, "delta": {"content": " x"}, "finish_reason": None}]}
    assert tracker.feed(_data(chunk)) == 1
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    assert tracker.feed(_data(end)) == 0
    assert tracker.finished
    assert tracker.output_tokens == 1


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol"):
        Endpoint("grpc")  # type: ignore[arg-type]


def test_lorax_stream_counts_tokens_and_reads_details() -> None:
    tracker = Endpoint("lorax").tracker()
    token = {"id": 1, "text": "a", "logprob": 0.0, "special": False}
    assert tracker.feed(_data({"token": token, "generated_text": None, "details": None})) == 1
    assert not tracker.finished
    final = {
        "token": token,
        "generated_text": "aa",
        "details": {"finish_reason": "length", "prompt_tokens": 4, "generated_tokens": 2},
    }
    assert tracker.feed(_data(final)) == 1
    assert tracker.finished
    assert (tracker.tokens, tracker.output_tokens, tracker.prompt_tokens) == (2, 2, 4)
    assert tracker.error is None


def test_lorax_error_event() -> None:
    tracker = Endpoint("lorax").tracker()
    tracker.feed(_data({"error": "boom", "error_type": "generation"}))
    assert tracker.error == ("generation", "boom")


def test_openai_stream_uses_usage_for_the_token_count() -> None:
    tracker = Endpoint("openai").tracker()
    chunk = {"choices": [{"index": 0, "text": " x", "finish_reason": None}], "usage": None}
    assert tracker.feed(_data(chunk)) == 1
    # Two tokens in one chunk (a server that coalesces): usage tells the real count.
    assert tracker.feed(_data(chunk)) == 1
    end = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    assert tracker.feed(_data(end)) == 0
    assert tracker.finished
    assert tracker.output_tokens == 2
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
    assert tracker.feed(_data(usage)) == 0
    assert tracker.feed("[DONE]") == 0
    assert (tracker.tokens, tracker.output_tokens, tracker.prompt_tokens) == (2, 3, 3)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"error": "busy", "error_type": "overloaded"}, ("overloaded", "busy")),
        (
            {"error": {"message": "nope", "type": "invalid_request_error"}},
            ("invalid_request_error", "nope"),
        ),
        ({"error": "bare"}, ("stream_error", "bare")),
    ],
)
def test_openai_error_events(payload: dict[str, object], expected: tuple[str, str]) -> None:
    tracker = Endpoint("openai").tracker()
    tracker.feed(_data(payload))
    assert tracker.error == expected


def test_malformed_event_is_an_invalid_response() -> None:
    tracker = Endpoint("lorax").tracker()
    tracker.feed("{not json")
    assert tracker.error is not None
    assert tracker.error[0] == "invalid_response"
