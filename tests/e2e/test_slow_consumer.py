"""A client that never reads is evicted while the others keep receiving, on both sink paths."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest
from pycrdt import Map

from app.transport import AsgiSink, TransportSink
from tests.conftest import mint
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e


def _stalled_client(port: int, path: str) -> socket.socket:
    """A real WebSocket handshake on a socket with a tiny receive buffer, then it never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _read_until_eof(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _close_code(stream: bytes) -> int | None:
    """The code of the first close frame in a stream of unmasked server frames."""
    pos = 0
    while pos + 2 <= len(stream):
        opcode, length = stream[pos] & 0x0F, stream[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length, pos = int.from_bytes(stream[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(stream[pos : pos + 8], "big"), pos + 8
        if opcode == 0x8:
            return int.from_bytes(stream[pos : pos + 2], "big")
        pos += length
    return None


async def test_slow_client_is_evicted_and_others_keep_receiving(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, peer_buffer_max_bytes=256 * 1024)
    async with yjs_client(server.ws_url, "slow", mint("writer")) as (writer, _, _):
        async with yjs_client(server.ws_url, "slow", mint("reader")) as (reader, _, _):
            stalled = await asyncio.to_thread(
                _stalled_client, server.port, f"/yjs/slow?token={mint('stalled')}"
            )
            try:
                room = server.node.rooms.get("slow")
                await eventually(lambda: len(room.peers) == 3)
                assert all(isinstance(peer.sink, TransportSink) for peer in room.peers.values())
                blob = "x" * 8000
                for i in range(400):
                    elements(writer)[f"e{i}"] = Map({"blob": blob, "i": i})
                    if i % 20 == 0:
                        await asyncio.sleep(0.01)
                await eventually(lambda: len(elements(reader)) == 400, timeout=30)
                await eventually(lambda: len(room.peers) == 2, timeout=10)
                assert {peer.user_id for peer in room.peers.values()} == {"writer", "reader"}
                # the stalled client finally reads: its backlog ends with a close frame saying why
                backlog = await asyncio.to_thread(_read_until_eof, stalled)
                assert _close_code(backlog) == 4508
            finally:
                stalled.close()


@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
async def test_asgi_fallback_sink_serves_and_evicts(server_factory, sqlite_url) -> None:
    """Under a uvicorn WebSocket implementation we cannot reach into, frames go through ASGI sends."""
    server = await server_factory(database_url=sqlite_url, ws="websockets", peer_queue_max=16)
    async with yjs_client(server.ws_url, "asgi", mint("writer")) as (writer, _, _):
        async with yjs_client(server.ws_url, "asgi", mint("reader")) as (reader, _, _):
            room = server.node.rooms.get("asgi")
            assert all(isinstance(peer.sink, AsgiSink) for peer in room.peers.values())
            stalled = await asyncio.to_thread(
                _stalled_client, server.port, f"/yjs/asgi?token={mint('stalled')}"
            )
            try:
                await eventually(lambda: len(room.peers) == 3)
                blob = "y" * 8000
                for i in range(800):
                    elements(writer)[f"e{i}"] = Map({"blob": blob})
                    if i % 20 == 0:
                        await asyncio.sleep(0.01)
                await eventually(lambda: len(elements(reader)) == 800, timeout=30)
                await eventually(lambda: len(room.peers) == 2, timeout=10)
            finally:
                stalled.close()
