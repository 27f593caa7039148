"""The ``openai`` backend against an OpenAI-compatible upstream on loopback.

The upstream is another gateway over the synthetic engine: it speaks the OpenAI API, which is all
the ``openai`` backend needs.
"""

from __future__ import annotations

import httpx
import openai

from lorax_gateway import GatewaySettings
from lorax_gateway.backends.openai_upstream import OpenAIBackend, OpenAIBackendConfig

from .conftest import ServeFactory


def test_openai_backend_relays_completions_and_chat(gateway_factory: ServeFactory) -> None:
    upstream = gateway_factory()
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=upstream.url))
    front = gateway_factory(GatewaySettings(backend="openai"), backend)
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0)
    out = client.completions.create(model="", prompt="one two three", max_tokens=2)
    assert out.choices[0].text == "one two"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None
    assert out.usage.prompt_tokens == 3
    assert out.model == "synthetic"  # the upstream's first model is the base model
    chat = client.chat.completions.create(
        model="org/public", messages=[{"role": "user", "content": "hey"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    # The upstream rendered the chat itself (with the adapter, which upper-cases).
    assert text == "<|ADAPTER:ORG/PUBLIC|><|USER|> HEY\n<|ASSISTANT|>"
    sent = upstream.backend.requests[-1]  # type: ignore[attr-defined]
    assert sent["parameters"]["adapter_id"] == "org/public"
    # LoRAX routes work too (as completions upstream); tokenize is not offered.
    r = httpx.post(
        f"{front.url}/generate", json={"inputs": "a b", "parameters": {"max_new_tokens": 5}}
    )
    assert r.json()["generated_text"] == "a b"
    r = httpx.post(f"{front.url}/tokenize", json={"inputs": "a"})
    assert r.status_code == 501
    assert r.json()["error_type"] == "not_supported"
    r = httpx.post(
        f"{front.url}/v1/completions", json={"model": "", "prompt": "x", "temperature": 9}
    )
    assert r.status_code == 422
    assert httpx.get(f"{front.url}/health").status_code == 200
