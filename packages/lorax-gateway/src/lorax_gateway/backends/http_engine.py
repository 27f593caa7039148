"""What the ``http`` backend knows about one engine process, and its streams from that engine.

An engine is in one of three states (:class:`EngineState`):

* ``UP``: its ``/health`` answered 200; it gets new requests.
* ``DRAINING``: it answers, but refuses new work (``/health`` 503, or ``/engine/generate`` 503 /
  a first event of type ``unavailable``: ``lorax-engine serve`` drains like this on SIGTERM). It
  gets no new requests and its running streams are left alone: the engine finishes them, or ends
  them itself at its ``--shutdown-timeout``.
* ``DOWN``: it refused a connection, or stopped answering while its streams received nothing
  (dead or hung). It gets no new requests, and streams left waiting on it are closed.

Whether a stream is *waiting* is tracked per stream: a reader paused because its client reads
slowly is not waiting for the engine, and its bytes may still be in the socket buffers of an
engine that finished it and exited.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from lorax_gateway.backends.base import EngineEvent


class EngineState(enum.Enum):
    """Routing state of one engine (see module docstring)."""

    UP = "up"
    DRAINING = "draining"
    DOWN = "down"


@dataclass(slots=True, eq=False)
class EngineStream:
    """One open ``/engine/generate`` response and whether its reader waits for bytes."""

    response: httpx.Response
    #: Monotonic time since which the reader has been waiting for the next chunk; None while it
    #: is not waiting (handling a chunk, or paused by a slow client).
    waiting_since: float | None = None

    def stalled(self, now: float, after_s: float) -> bool:
        """True when the reader has waited more than ``after_s`` seconds for a byte."""
        return self.waiting_since is not None and now - self.waiting_since > after_s


@dataclass(slots=True, eq=False)
class Engine:
    """One engine and what the gateway knows about it."""

    url: str
    state: EngineState = EngineState.DOWN
    in_flight: int = 0
    streams: set[EngineStream] = field(default_factory=set[EngineStream])
    #: Monotonic time of the last bytes any stream received from this engine.
    last_activity: float = 0.0
    #: Probes in a row that got no answer (timeouts; a refused connection counts as well).
    failed_probes: int = 0

    @property
    def routable(self) -> bool:
        """True when new requests may be sent here."""
        return self.state is EngineState.UP

    def streaming_recently(self, now: float, within_s: float) -> bool:
        """True when some stream received bytes in the last ``within_s`` seconds."""
        return bool(self.streams) and now - self.last_activity < within_s


_decode_event = msgspec.json.Decoder(dict[str, Any]).decode


async def sse_events(stream: EngineStream, engine: Engine) -> AsyncIterator[EngineEvent]:
    """The ``data:`` payloads of an SSE body, parsed from raw bytes.

    This is the gateway's per-token hot path with remote engines: splitting bytes and decoding
    with msgspec costs a fraction of text line iteration plus ``json.loads``.
    """
    buffer = b""
    chunks = aiter(stream.response.aiter_bytes())
    while True:
        stream.waiting_since = time.monotonic()
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        finally:
            stream.waiting_since = None
        engine.last_activity = time.monotonic()
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    yield _decode_event(line[5:])
