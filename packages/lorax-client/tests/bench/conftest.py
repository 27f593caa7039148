"""A stub LoRAX/OpenAI server on loopback for lorax-bench's tests.

A plain asyncio HTTP/1.1 server in its own thread (so both async tests and the blocking CLI can
use it). It streams ``max_new_tokens`` (or ``max_tokens``) tokens with a controlled delay, counts
one token per prompt word plus a BOS token, records every request, tracks how many streams are
open at once, and fails on purpose for chosen adapter ids.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class StubBehaviour:
    """What the stub does; tests change it between runs."""

    ttft_s: float = 0.0
    token_delay_s: float = 0.001
    #: adapter id -> failure: "generation" (424), "overloaded" (429), "cut" (body ends early),
    #: "event" (an SSE error event after one token), "hang" (no token ever).
    failures: dict[str, str] = field(default_factory=dict[str, str])
    tokenize: bool = True


class StubServer:
    """The running stub: ``url``, ``behaviour``, and what it saw."""

    def __init__(self) -> None:
        self.behaviour = StubBehaviour()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.open_streams = 0
        self.max_open_streams = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(timeout=10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        server = self._server
        if server is not None:

            async def close() -> None:
                server.close()
                # Streams still open (a "hang" the client gave up on) end with the server.
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self) -> None:
        self.requests.clear()
        self.max_open_streams = 0

    def generate_bodies(self) -> list[dict[str, Any]]:
        return [b for p, b in self.requests if p in ("/generate_stream", "/v1/completions")]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            body: dict[str, Any] = json.loads(raw) if raw else {}
            self.requests.append((path, body))
            await self._route(method, path, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _route(
        self, method: str, path: str, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        if method == "POST" and path == "/tokenize" and self.behaviour.tokenize:
            words = body["inputs"].split()
            tokens = [{"id": 1, "text": "<s>", "start": 0, "stop": 0}]
            tokens += [{"id": 5, "text": w, "start": 0, "stop": 0} for w in words]
            await _send_json(writer, 200, tokens)
        elif method == "GET" and path == "/info":
            await _send_json(writer, 200, {"model_id": "stub", "max_total_tokens": 4096})
        elif method == "POST" and path in ("/generate_stream", "/v1/completions"):
            await self._generate(path == "/v1/completions", body, writer)
        else:
            await _send_json(writer, 404, {"error": "no such route", "error_type": "not_found"})

    async def _generate(
        self, openai: bool, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        if openai:
            adapter, prompt, n = body["model"], body["prompt"], body["max_tokens"]
        else:
            params = body["parameters"]
            adapter, prompt, n = params.get("adapter_id"), body["inputs"], params["max_new_tokens"]
        failure = self.behaviour.failures.get(adapter or "")
        if failure == "generation":
            await _send_json(
                writer, 424, {"error": f"{adapter} failed", "error_type": "generation"}
            )
            return
        if failure == "overloaded":
            await _send_json(writer, 429, {"error": "busy", "error_type": "overloaded"})
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        )
        await writer.drain()
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        try:
            await self._tokens(openai, len(prompt.split()) + 1, n, failure, writer)
        finally:
            self.open_streams -= 1

    async def _tokens(
        self, openai: bool, prompt_tokens: int, n: int, failure: str | None, w: Any
    ) -> None:
        if failure == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(self.behaviour.ttft_s)
        for i in range(n):
            if i:
                await asyncio.sleep(self.behaviour.token_delay_s)
            if failure == "cut" and i == 2:
                return
            if failure == "event" and i == 1:
                w.write(_sse({"error": "adapter crashed", "error_type": "generation"}))
                return
            last = i == n - 1
            if openai:
                choice = {"index": 0, "text": f" t{i}", "finish_reason": "length" if last else None}
                w.write(_sse({"object": "text_completion", "choices": [choice], "usage": None}))
            else:
                event: dict[str, Any] = {
                    "token": {"id": 9, "text": f" t{i}", "logprob": -0.1, "special": False},
                    "generated_text": None,
                    "details": None,
                }
                if last:
                    event["generated_text"] = "..."
                    event["details"] = {
                        "finish_reason": "length",
                        "prompt_tokens": prompt_tokens,
                        "generated_tokens": n,
                        "seed": None,
                    }
                w.write(_sse(event))
            await w.drain()
        if openai:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n}
            w.write(_sse({"object": "text_completion", "choices": [], "usage": usage}))
            w.write(b"data: [DONE]\n\n")
            await w.drain()


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: object) -> None:
    data = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()


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
