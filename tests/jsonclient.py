"""A JSON channel protocol client for tests: JSON text or MessagePack, with a background reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import msgpack
import websockets

MSGPACK = "maily.msgpack.v1"


class JsonClient:
    """Sends envelopes and collects everything the server sends; ``expect`` consumes matches in order."""

    def __init__(self, connection: websockets.ClientConnection, *, binary: bool) -> None:
        self.connection = connection
        self.binary = binary
        self.received: list[Any] = []  # decoded messages (dicts) and raw compact frames (bytes)
        self._consumed: set[int] = set()
        self._arrived = asyncio.Event()
        self.closed: websockets.ConnectionClosed | None = None
        self._reader = asyncio.create_task(self._read())
        self.session_id: str | None = None
        self._next_id = 0

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.connection.recv()
                if isinstance(frame, bytes):
                    if self.binary and frame[:1] not in (b"\x11",):
                        self.received.append(msgpack.unpackb(frame))
                    else:
                        self.received.append(frame)
                else:
                    self.received.append(json.loads(frame))
                self._arrived.set()
        except websockets.ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._arrived.set()

    def next_id(self) -> str:
        self._next_id += 1
        return f"m{self._next_id}"

    async def send(self, kind: str, data: Any, *, id: str | int | None = None, **top: Any) -> None:
        message: dict[str, Any] = {"type": kind, "data": data, **top}
        if id is not None:
            message["id"] = id
        await self.send_raw(message)

    async def send_raw(self, message: Any) -> None:
        if isinstance(message, str | bytes):
            await self.connection.send(message)
        elif self.binary:
            await self.connection.send(msgpack.packb(message))
        else:
            await self.connection.send(json.dumps(message))

    async def expect(
        self, kind: str | None = None, where: Callable[[Any], bool] | None = None, timeout: float = 5.0
    ) -> Any:
        """The first unconsumed message of ``kind`` (and matching ``where``); waits up to ``timeout``."""

        def matches(message: Any) -> bool:
            if kind is not None and (not isinstance(message, dict) or message.get("type") != kind):
                return False
            return where is None or where(message)

        async with asyncio.timeout(timeout):
            while True:
                for index, message in enumerate(self.received):
                    if index not in self._consumed and matches(message):
                        self._consumed.add(index)
                        return message
                if self.closed is not None:
                    raise AssertionError(f"connection closed ({self.closed}) before {kind} arrived")
                self._arrived.clear()
                await self._arrived.wait()

    async def request(self, kind: str, data: Any, reply: str, **top: Any) -> Any:
        """Send a message with a fresh id and wait for ``reply`` (or an error naming that id)."""
        message_id = self.next_id()
        await self.send(kind, data, id=message_id, **top)
        return await self.expect(
            where=lambda m: (
                isinstance(m, dict)
                and (
                    m.get("type") == reply
                    or (m.get("type") == "error" and m["data"].get("original_message_id") == message_id)
                )
            )
        )

    async def error(self, code: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        return await self.expect("error", (lambda m: m["data"]["code"] == code) if code else None, timeout)

    def unconsumed(self, kind: str | None = None) -> list[Any]:
        return [
            m
            for i, m in enumerate(self.received)
            if i not in self._consumed and (kind is None or (isinstance(m, dict) and m.get("type") == kind))
        ]

    async def wait_closed(self, timeout: float = 10.0) -> websockets.ConnectionClosed:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        assert self.closed is not None
        return self.closed

    async def subscribe(self, channel: str, **options: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel}
        if options:
            data["options"] = options
        reply = await self.request("subscribe", data, "subscribed")
        assert reply["type"] == "subscribed", reply
        return reply

    async def close(self) -> None:
        await self.connection.close()
        self._reader.cancel()
        with suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await self._reader


@asynccontextmanager
async def json_client(
    base_url: str,
    token: str | None,
    *,
    path: str = "/ws",
    binary: bool = False,
    init: bool = True,
    init_data: dict[str, Any] | None = None,
) -> AsyncIterator[JsonClient]:
    """Connect to the JSON endpoint; with ``init``, send ``connection_init`` and wait for the ack."""
    url = f"{base_url}{path}" + (f"?token={token}" if token else "")
    subprotocols = [MSGPACK] if binary else None
    async with websockets.connect(url, subprotocols=subprotocols, max_size=None, compression=None) as conn:
        client = JsonClient(conn, binary=binary)
        try:
            if init:
                await client.send("connection_init", init_data or {"clientInfo": {"version": "test"}})
                ack = await client.expect("connection_ack")
                client.session_id = ack["sessionId"]
            yield client
        finally:
            await client.close()
