"""The SSE decoder: the format's corner cases, and chunk boundaries never changing the events."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lorax.sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def test_basic_fields_and_multiline_data() -> None:
    body = b"event: token\nid: 7\nretry: 1500\ndata: line one\ndata:line two\n\ndata: x\n\n"
    assert decode(body) == [
        ServerSentEvent(data="line one\nline two", event="token", id="7", retry=1500),
        # `id` persists across events; `event` and `retry` do not.
        ServerSentEvent(data="x", id="7"),
    ]


def test_line_endings_lf_crlf_and_cr() -> None:
    expected = [ServerSentEvent(data="a"), ServerSentEvent(data="b")]
    assert decode(b"data: a\n\ndata: b\n\n") == expected
    assert decode(b"data: a\r\n\r\ndata: b\r\n\r\n") == expected
    assert decode(b"data: a\r\rdata: b\r\r") == expected


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    # "\r" ends one chunk and "\n" opens the next: one line ending, not an extra blank line.
    assert decode(b"data: a\r", b"\ndata: b\r\n\r\n") == [ServerSentEvent(data="a\nb")]
    assert decode(b"data: a\r", b"", b"\n\r\n") == [ServerSentEvent(data="a")]


def test_comments_and_events_without_data_are_skipped() -> None:
    body = b": keep-alive\n\nevent: ping\n\n:\ndata: real\n\n"
    assert decode(body) == [ServerSentEvent(data="real")]


def test_field_details() -> None:
    # No space after the colon is fine; only one space is stripped; a bare name has empty value.
    assert decode(b"data:x\n\n") == [ServerSentEvent(data="x")]
    assert decode(b"data:  two\n\n") == [ServerSentEvent(data=" two")]
    assert decode(b"data\n\n") == [ServerSentEvent(data="")]
    assert decode(b"retry: soon\nunknown: 1\ndata: y\n\n") == [ServerSentEvent(data="y")]
    assert decode(b"id: a\0b\ndata: z\n\n") == [ServerSentEvent(data="z")]


def test_close_delivers_an_event_missing_its_blank_line() -> None:
    assert decode(b"data: last\n") == [ServerSentEvent(data="last")]
    assert decode(b"data: last") == [ServerSentEvent(data="last")]
    assert decode(b"") == []


def test_utf8_split_inside_a_character() -> None:
    body = 'data: {"text": "日本 ✓"}\n\n'.encode()
    cut = body.index("本".encode()) + 1
    assert decode(body[:cut], body[cut:]) == [ServerSentEvent(data='{"text": "日本 ✓"}')]


# Event streams shaped like a LoRAX server's: JSON events, keep-alives, mixed line endings.
_payloads = st.lists(
    st.dictionaries(st.sampled_from(["text", "id", "x"]), st.text(max_size=8) | st.integers()),
    min_size=1,
    max_size=6,
)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[dict[str, str | int]]]:
    payloads = draw(_payloads)
    out = b""
    for payload in payloads:
        newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        if draw(st.booleans()):
            out += b": keep-alive" + newline
        out += b"data: " + json.dumps(payload, ensure_ascii=False).encode() + newline + newline
    return out, payloads


@settings(max_examples=200, deadline=None)
@given(stream=_streams(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_chunk_boundaries_never_change_the_events(
    stream: tuple[bytes, list[dict[str, str | int]]], cuts: list[int]
) -> None:
    body, payloads = stream
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert b"".join(chunks) == body
    events = decode(*chunks)
    assert events == decode(body)
    assert [json.loads(e.data) for e in events] == payloads
