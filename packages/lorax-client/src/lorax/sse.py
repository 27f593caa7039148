"""A sans-IO Server-Sent Events decoder (the WHATWG `text/event-stream` rules).

Feed it the body's bytes in whatever pieces the network delivers; it returns each event once its
terminating blank line has arrived. Pieces may split anywhere: inside a field, inside a UTF-8
character, or between the `\\r` and `\\n` of a line ending. Comment lines (`: keep-alive`) are
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SSEDecoder", "ServerSentEvent"]


@dataclass(slots=True, frozen=True)
class ServerSentEvent:
    """One dispatched event. `data` joins the event's `data:` lines with `\\n`."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


@dataclass(slots=True)
class SSEDecoder:
    """Incremental decoder: `feed(chunk)` for every piece of the body, then `close()`."""

    _buffer: bytearray = field(default_factory=bytearray)
    # True when the previous piece ended in "\r": a "\n" opening the next one belongs to it.
    _after_cr: bool = False
    _data: list[str] = field(default_factory=list[str])
    _event: str | None = None
    _id: str | None = None
    _retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume the next piece of the body; return the events it completed (maybe none)."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = False
        self._buffer += chunk
        events: list[ServerSentEvent] = []
        start = 0
        buffer = self._buffer
        # Next CR and LF at or after `start`, searched again only once passed: searching for an
        # absent "\r" on every line would make one large piece quadratic.
        cr = buffer.find(b"\r")
        lf = buffer.find(b"\n")
        while True:
            if cr != -1 and cr < start:
                cr = buffer.find(b"\r", start)
            if lf != -1 and lf < start:
                lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            line = bytes(buffer[start:end])
            if buffer[end] == 0x0D:  # "\r": swallow a following "\n", or remember to
                if end + 1 < len(buffer):
                    start = end + 2 if buffer[end + 1] == 0x0A else end + 1
                else:
                    start = end + 1
                    self._after_cr = True
            else:
                start = end + 1
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del buffer[:start]
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of body: a last line without its newline still counts, and an event that lacks
        only its closing blank line is still delivered (servers that end the body right after
        the last `data:` line are common)."""
        events: list[ServerSentEvent] = []
        if self._buffer:
            line = bytes(self._buffer).decode("utf-8", errors="replace")
            self._buffer.clear()
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            # Per the spec an event without data is not dispatched (its `id` still persists).
            self._event, self._retry = None, None
            return None
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
        )
        self._data = []
        self._event, self._retry = None, None
        return event
