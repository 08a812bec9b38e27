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
