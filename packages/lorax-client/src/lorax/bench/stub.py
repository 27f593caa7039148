"""A stub LoRAX/OpenAI-compatible server: streams tokens with a controlled delay, no model.

lorax-bench's tests run against it, and it measures the bench client itself: with no delay it
answers as fast as one Python process can, so a run against it shows how many tokens per second
the client follows (``python -m lorax.bench.stub --port 8099 --token-delay 0``).

A plain asyncio HTTP/1.1 server (one response per connection) in its own thread, so that async
code and blocking code can both use it. Routes: ``POST /generate_stream`` (LoRAX SSE),
``POST /v1/completions`` (OpenAI SSE, ``usage`` and ``[DONE]`` at the end), ``POST /tokenize``
(one token per whitespace-separated word, plus a BOS token), ``GET /info``, ``GET /health``. It
records every request, tracks how many streams are open at once, and fails on purpose for the
adapter ids in ``behaviour.failures``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lorax.errors import json_object

__all__ = ["StubBehaviour", "StubServer", "main"]

# route -> the shape of its stream
_GENERATE_ROUTES = {
    "/generate_stream": "lorax",
    "/v1/completions": "openai",
    "/v1/chat/completions": "openai-chat",
}


@dataclass(slots=True)
class StubBehaviour:
    """What the stub does; may be changed between runs."""

    #: Seconds before the first token.
    ttft_s: float = 0.0
    #: Seconds between tokens (0: back to back).
    token_delay_s: float = 0.001
    #: adapter id -> failure: ``generation`` (424), ``overloaded`` (429), ``cut`` (the body ends
    #: after two tokens), ``event`` (an SSE error event after one token), ``hang`` (no token).
    failures: dict[str, str] = field(default_factory=dict[str, str])
    #: Whether ``/tokenize`` exists.
    tokenize: bool = True

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.token_delay_s < 0:
            raise ValueError("delays must be >= 0")


class StubServer:
    """The stub on ``127.0.0.1`` (``port`` 0: a free one); ``start()`` sets ``url``."""

    def __init__(self, behaviour: StubBehaviour | None = None, port: int = 0) -> None:
        self.behaviour = behaviour or StubBehaviour()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.open_streams = 0
        self.max_open_streams = 0
        self.url = ""
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        """Listen (in the stub's thread) and set ``url``."""
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self._port, backlog=4096), self._loop
        )
        self._server = started.result(timeout=10)
        port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop listening, end the streams still open, and stop the thread."""
        server = self._server
        if server is not None:

            async def close() -> None:
                server.close()
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self) -> None:
        """Forget the requests seen and the peak of open streams."""
        self.requests.clear()
        self.max_open_streams = 0

    def generate_bodies(self) -> list[dict[str, Any]]:
        """Bodies of the generation requests seen, in arrival order."""
        return [b for p, b in self.requests if p in _GENERATE_ROUTES]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            body = json_object(json.loads(raw)) if raw else {}
            self.requests.append((path, body or {}))
            await self._route(method, path, body or {}, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _route(
        self, method: str, path: str, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        if method == "POST" and path == "/tokenize" and self.behaviour.tokenize:
            text = str(body.get("inputs", ""))
            tokens = [{"id": 1, "text": "<s>", "start": 0, "stop": 0}]
            tokens += [
                {"id": 5, "text": m.group(), "start": m.start(), "stop": m.end()}
                for m in re.finditer(r"\S+", text)
            ]
            await _send_json(writer, 200, tokens)
        elif method == "GET" and path == "/info":
            await _send_json(writer, 200, {"model_id": "stub", "max_total_tokens": 1 << 20})
        elif method == "GET" and path == "/health":
            await _send_json(writer, 200, {})
        elif method == "POST" and path in _GENERATE_ROUTES:
            await self._generate(_GENERATE_ROUTES[path], body, writer)
        else:
            await _send_json(writer, 404, {"error": "no such route", "error_type": "not_found"})

    async def _generate(
        self, shape: str, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        if shape == "openai":
            adapter, prompt, n = body.get("model"), body.get("prompt"), body.get("max_tokens")
        elif shape == "openai-chat":
            messages: list[Any] = body.get("messages") or [{}]
            last = json_object(messages[-1]) or {}
            adapter, prompt, n = body.get("model"), last.get("content"), body.get("max_tokens")
        else:
            params = json_object(body.get("parameters")) or {}
            adapter, prompt, n = (
                params.get("adapter_id"),
                body.get("inputs"),
                params.get("max_new_tokens"),
            )
        failure = self.behaviour.failures.get(str(adapter or ""))
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
            prompt_tokens = len(str(prompt or "").split()) + 1
            await self._tokens(shape, prompt_tokens, int(n or 16), failure, writer)
        finally:
            self.open_streams -= 1

    async def _tokens(
        self,
        shape: str,
        prompt_tokens: int,
        n: int,
        failure: str | None,
        writer: asyncio.StreamWriter,
    ) -> None:
        behaviour = self.behaviour
        if failure == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(behaviour.ttft_s)
        for i in range(n):
            if i:
                # sleep(0) still yields, so back-to-back streams interleave.
                await asyncio.sleep(behaviour.token_delay_s)
            if failure == "cut" and i == 2:
                return
            if failure == "event" and i == 1:
                writer.write(_sse({"error": "adapter crashed", "error_type": "generation"}))
                return
            last = i == n - 1
            if shape != "lorax":
                finish = "length" if last else None
                if shape == "openai":
                    choice = {"index": 0, "text": f" t{i}", "finish_reason": finish}
                else:
                    choice = {"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": finish}
                writer.write(_sse({"object": "chunk", "choices": [choice], "usage": None}))
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
                writer.write(_sse(event))
            await writer.drain()
        if shape != "lorax":
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n}
            writer.write(_sse({"object": "chunk", "choices": [], "usage": usage}))
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()


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


def main(argv: list[str] | None = None) -> None:
    """``python -m lorax.bench.stub [--port N] [--token-delay S] [--ttft S]``: serve until
    interrupted."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lorax.bench.stub", description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    args = parser.parse_args(argv)
    server = StubServer(StubBehaviour(ttft_s=args.ttft, token_delay_s=args.token_delay), args.port)
    server.start()
    print(f"stub server on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
