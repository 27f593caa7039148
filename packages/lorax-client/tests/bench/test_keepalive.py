"""lorax-bench never sends a request on a connection that the server may be closing."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import httpx
import pytest

from lorax.bench.session import pool_limits

pytestmark = pytest.mark.anyio

# The keep-alive timeout of the server in this test: shorter than any real server's (uvicorn's
# is 5 s), longer than lorax-bench's expiry.
SERVER_IDLE_S = 1.5


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive; a request arriving on a connection idle for ``SERVER_IDLE_S``
    or more meets a server that is closing it: the connection is reset, as a real server's
    close racing the client's send does."""
    last = time.monotonic()
    while True:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # the client closed it
            writer.close()
            return
        if time.monotonic() - last >= SERVER_IDLE_S:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        last = time.monotonic()


async def test_a_connection_idle_past_the_expiry_is_not_reused() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(limits=pool_limits(4)) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
            await asyncio.sleep(SERVER_IDLE_S + 0.1)
            # With httpx's default 5 s expiry this reuses the idle connection and is reset.
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
    finally:
        server.close()
        await server.wait_closed()
