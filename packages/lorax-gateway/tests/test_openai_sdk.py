"""OpenAI routes through the official ``openai`` SDK over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from lorax_gateway.backends.synthetic import SyntheticBackend, SyntheticConfig
from lorax_gateway.testing import Served

from .conftest import ServeFactory


@pytest.fixture
def client(gateway: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def test_completion_usage_and_finish(client: openai.OpenAI) -> None:
    out = client.completions.create(model="", prompt="one two three", max_tokens=10)
    assert out.object == "text_completion"
    assert out.id.startswith("cmpl-")
    assert out.model == "synthetic"
    assert out.choices[0].text == "one two three"
    assert out.choices[0].finish_reason == "stop"  # EOS
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        3,
        4,
        7,
    )


def test_completion_stop_length_echo_and_lists(client: openai.OpenAI) -> None:
    out = client.completions.create(model="", prompt="a b c d", stop="c", max_tokens=10)
    assert out.choices[0].text == "a b c"
    assert out.choices[0].finish_reason == "stop"
    out = client.completions.create(model="", prompt="a b c d", max_tokens=2, echo=True)
    assert out.choices[0].text == "a b c da b"
    assert out.choices[0].finish_reason == "length"
    out = client.completions.create(model="", prompt=["x y", "p q r"], max_tokens=10, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == ["x y", "x y", "p q r", "p q r"]
    assert out.usage is not None
    assert out.usage.prompt_tokens == 5  # each prompt counted once, not once per choice


def test_completion_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(model="", prompt="k l", max_tokens=2, logprobs=2)
    lp = out.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == ["k", " l"]
    assert lp.token_logprobs == [-0.25, -0.25]
    assert lp.text_offset == [0, 1]
    assert lp.top_logprobs is not None
    assert len(lp.top_logprobs[0]) == 2


def test_completion_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="org/public",
            prompt="s t",
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert all(c.object == "text_completion" and c.created > 0 for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "S T"  # the adapter upper-cases
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_multi_turn_and_unique_ids(client: openai.OpenAI, gateway: Served) -> None:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    a = client.chat.completions.create(model="", messages=messages)  # type: ignore[arg-type]
    prompt = gateway.backend.requests[-1]["inputs"]  # type: ignore[attr-defined]
    b = client.chat.completions.create(model="", messages=messages, max_tokens=3)  # type: ignore[arg-type]
    assert a.id != b.id
    assert a.id.startswith("chatcmpl-")
    assert a.object == "chat.completion"
    assert a.choices[0].message.role == "assistant"
    # The synthetic engine echoes the rendered prompt: the whole conversation went through the
    # chat template, in order.
    assert (
        prompt
        == "<|system|> be brief\n<|user|> hi\n<|assistant|> hello\n<|user|> bye\n<|assistant|>"
    )
    assert a.choices[0].message.content == prompt
    assert a.choices[0].finish_reason == "stop"
    assert b.choices[0].finish_reason == "length"


def test_chat_stream_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="org/public",
        messages=[{"role": "user", "content": "yo"}],
        max_tokens=50,
        stream=True,
        n=2,
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.created > 0 for c in chunks)
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        text = "".join(ch.delta.content or "" for ch in mine)
        assert text == "<|ADAPTER:ORG/PUBLIC|><|USER|> YO\n<|ASSISTANT|>"
        assert mine[-1].finish_reason == "stop"


def test_chat_adapter_through_extra_body_and_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="org/public",
        messages=[{"role": "user", "content": "z"}],
        max_tokens=2,
        logprobs=True,
        top_logprobs=1,
        extra_body={"adapter_source": "hub", "api_token": "hf_secret"},
    )
    assert out.choices[0].logprobs is not None
    content = out.choices[0].logprobs.content
    assert content is not None
    assert len(content) == 2
    assert content[0].top_logprobs[0].logprob < content[0].logprob


def test_errors_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        client.completions.create(model="", prompt="x", temperature=5)
    assert exc.value.body is not None
    with pytest.raises(openai.APIStatusError) as status:
        client.completions.create(model="nope/missing", prompt="x")
    assert status.value.status_code == 424
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="", messages=[])


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "synthetic"
    assert set(ids[1:]) == {"org/public", "acme/private", "globex/secret"}


def test_response_format_mapping(gateway: Served) -> None:
    backend = gateway.backend
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "",
            "messages": [{"role": "user", "content": "q"}],
            "max_tokens": 1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
        },
    )
    assert r.status_code == 200, r.text
    sent = backend.requests[-1]  # type: ignore[attr-defined]
    assert sent["parameters"]["response_format"] == {
        "type": "json_schema",
        "schema": {"type": "object"},
    }
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "",
            "messages": [{"role": "user", "content": "q"}],
            "response_format": {"type": "json_schema"},
        },
    )
    assert r.status_code == 422


def test_chat_template_errors_keep_the_engine_error_type(gateway_factory: ServeFactory) -> None:
    class AdapterError(Exception):
        error_type = "generation"

    class FailingTemplate(SyntheticBackend):
        async def apply_chat_template(self, messages: Any, adapter_id: Any, tools: Any) -> str:
            if adapter_id:
                raise AdapterError(f"adapter {adapter_id} could not be loaded")
            raise ValueError("messages must alternate user/assistant")

    served = gateway_factory(None, FailingTemplate(SyntheticConfig(adapters=("org/public",))))
    url = f"{served.url}/v1/chat/completions"
    r = httpx.post(
        url, json={"model": "org/public", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 424
    assert r.json() == {
        "error": "adapter org/public could not be loaded",
        "error_type": "generation",
    }
    r = httpx.post(url, json={"model": "", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 422
    assert "alternate" in r.json()["error"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", {"model": "", "prompt": "hello big", "max_tokens": 3}),
        (
            "/v1/chat/completions",
            {"model": "", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        ),
    ],
)
def test_openai_routes_content_types(gateway: Served, route: str, body: dict[str, object]) -> None:
    # A stream is SSE on the wire (clients that dispatch on the header depend on it), JSON is JSON.
    streamed = httpx.post(f"{gateway.url}{route}", json={**body, "stream": True})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith("data: [DONE]")
    whole = httpx.post(f"{gateway.url}{route}", json=body)
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("application/json")
