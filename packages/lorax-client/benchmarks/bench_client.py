"""Client-side cost per request and per streamed token, against an in-process fake server
(httpx.MockTransport), so that only the client's own work is measured.

    uv run python packages/lorax-client/benchmarks/bench_client.py
"""

from __future__ import annotations

import json
import time

import httpx

from lorax import Client
from lorax.sse import SSEDecoder

TOKENS = 2000


def _stream_body(n: int) -> bytes:
    events = [
        {
            "token": {"id": i, "text": " tok", "logprob": -0.5, "special": False},
            "generated_text": None,
        }
        for i in range(n - 1)
    ]
    events.append(
        {
            "token": {"id": n, "text": " end", "logprob": -0.5, "special": False},
            "generated_text": " tok" * (n - 1) + " end",
            "details": {"finish_reason": "length", "prompt_tokens": 4, "generated_tokens": n},
        }
    )
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)


def main() -> None:
    body = _stream_body(TOKENS)
    generated = {
        "generated_text": "hello",
        "details": {"finish_reason": "length", "generated_tokens": 1},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/generate":
            return httpx.Response(200, json=generated)
        # 1 KiB network reads, as a real socket would deliver them.
        return httpx.Response(200, content=[body[i : i + 1024] for i in range(0, len(body), 1024)])

    client = Client(
        "http://bench.test", session=httpx.Client(transport=httpx.MockTransport(handler))
    )

    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        client.generate("hi", max_new_tokens=8, temperature=0.7)
    per_call = (time.perf_counter() - start) / n
    print(f"generate: {per_call * 1e6:.0f} us per call (validate, build, send to mock, parse)")

    rounds = 5
    start = time.perf_counter()
    for _ in range(rounds):
        events = list(client.generate_stream("hi", max_new_tokens=TOKENS))
        assert len(events) == TOKENS
    per_token = (time.perf_counter() - start) / (rounds * TOKENS)
    print(f"generate_stream: {per_token * 1e6:.1f} us per token ({1 / per_token:,.0f} tokens/s)")

    start = time.perf_counter()
    for _ in range(rounds):
        decoder = SSEDecoder()
        count = sum(len(decoder.feed(body[i : i + 1024])) for i in range(0, len(body), 1024))
        assert count == TOKENS
    per_event = (time.perf_counter() - start) / (rounds * TOKENS)
    print(f"SSE decoder alone: {per_event * 1e6:.1f} us per event")


if __name__ == "__main__":
    main()
