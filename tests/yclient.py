"""A real Yjs client for tests: pycrdt's ``Provider`` over a ``websockets`` client connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import websockets
from pycrdt import Channel, Doc, Map, Provider


class WebsocketChannel(Channel):
    """pycrdt ``Channel`` over a ``websockets`` client connection (binary frames only)."""

    def __init__(self, connection: websockets.ClientConnection, path: str) -> None:
        self._connection = connection
        self._path = path
        self.received: list[bytes] = []  # every frame, including awareness/auth ones the provider ignores

    @property
    def path(self) -> str:
        return self._path

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        await self._connection.send(message)

    async def recv(self) -> bytes:
        while True:
            message = await self._connection.recv()
            if isinstance(message, bytes):
                self.received.append(message)
                return message


@asynccontextmanager
async def yjs_client(
    base_url: str, canvas_id: str, token: str, doc: Doc | None = None, *, wait_synced: bool = True
) -> AsyncIterator[tuple[Doc, WebsocketChannel, websockets.ClientConnection]]:
    """Connect a pycrdt document to ``{base_url}/yjs/{canvas_id}`` and keep it synced inside the block."""
    doc = doc if doc is not None else Doc()
    url = f"{base_url}/yjs/{canvas_id}?token={token}"
    async with websockets.connect(url, max_size=None, compression=None) as connection:
        channel = WebsocketChannel(connection, canvas_id)
        async with Provider(doc, channel) as provider:
            if wait_synced:
                async with asyncio.timeout(10):
                    await provider.synced.wait()
            yield doc, channel, connection


def elements(doc: Doc) -> Map:
    return doc.get("elements", type=Map)


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until ``predicate()`` is truthy; fail with its last value after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)
