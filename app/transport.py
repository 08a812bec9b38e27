"""Outbound frame sinks: straight to uvicorn's transport when possible, through ASGI otherwise.

Why reach past ASGI: a server frame is unmasked, so one prebuilt frame serves every receiver,
and ``transport.write`` of it costs a fraction of ``await websocket.send_bytes`` (DESIGN.md,
"Performance notes"); a client that stops reading can also be evicted at once (``abort``),
where an ASGI close would wait on the paused transport. This module is the only one that knows
uvicorn's internals: the ``websockets-sansio`` protocol object, its ``transport``, ``conn`` and
``close_sent``. It is pinned by the uvicorn bound in pyproject.toml and checked by
``tests/e2e/test_transport.py``; any other server gets the ASGI sink, which is correct but slower.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from crdt.errors import CrdtError
from crdt.frame import OutFrame, close_frame

from .errors import close_code_for

log = logging.getLogger(__name__)

_PROTOCOL_KEY = "maily.ws_protocol"
EVICT_TIMEOUT_S = 5.0  # how long an evicted connection may take to drain its backlog and the close frame


class CaptureWsProtocol:
    """Pure ASGI middleware: remembers uvicorn's WebSocket protocol object in the scope.

    Must sit outside anything that wraps ``send`` (Starlette's ServerErrorMiddleware passes
    WebSocket sends through untouched, so a user middleware sees uvicorn's own bound method).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            protocol = getattr(send, "__self__", None)
            if _is_sansio_protocol(protocol):
                scope[_PROTOCOL_KEY] = protocol
        await self.app(scope, receive, send)


def _is_sansio_protocol(protocol: Any) -> bool:
    return type(protocol).__name__ == "WebSocketsSansIOProtocol" and hasattr(protocol, "transport")


class TransportSink:
    """Writes prebuilt frames to the connection's asyncio transport; never blocks.

    The backlog is the transport's write buffer; a write finding it already over
    ``max_buffer_bytes`` reports failure (one large frame, such as an initial sync, always fits).
    """

    def __init__(
        self, protocol: Any, max_buffer_bytes: int, evict_timeout_s: float = EVICT_TIMEOUT_S
    ) -> None:
        self._protocol = protocol
        self._transport: asyncio.WriteTransport = protocol.transport
        self._max = max_buffer_bytes
        self._evict_timeout_s = evict_timeout_s

    def write(self, frame: OutFrame) -> bool:
        transport = self._transport
        if self._protocol.close_sent or transport.is_closing():
            return True  # closing: the handler sees the disconnect; nothing more to deliver
        over = transport.get_write_buffer_size() > self._max
        transport.write(frame.wire)
        return not over

    def abort(self) -> None:
        self._transport.abort()

    def evict(self, error: CrdtError) -> None:
        """Queue a close frame behind the backlog and close; abort if it has not drained in time."""
        transport = self._transport
        if self._protocol.close_sent or transport.is_closing():
            return
        self._protocol.close_sent = True  # uvicorn must not write to this connection any more
        transport.write(close_frame(close_code_for(error), error.code))
        transport.close()  # after the buffer is flushed
        asyncio.get_running_loop().call_later(self._evict_timeout_s, transport.abort)

    async def run(self) -> None:
        """Nothing to pump: frames go straight to the transport."""


class AsgiSink:
    """Fallback for servers whose transport we cannot reach: a bounded queue and one writer task."""

    def __init__(self, websocket: WebSocket, queue_max: int) -> None:
        self._websocket = websocket
        self._queue: asyncio.Queue[OutFrame | None] = asyncio.Queue(queue_max)
        self._aborted = False

    def write(self, frame: OutFrame) -> bool:
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    def evict(self, error: CrdtError) -> None:
        """Through ASGI a close would wait behind the stalled sends: drop the queue and the socket."""
        self.abort()

    def abort(self) -> None:
        self._aborted = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """Pump queued frames to the socket until ``abort``; run it as the connection's writer task."""
        while (frame := await self._queue.get()) is not None:
            if frame.text:
                await self._websocket.send_text(frame.payload.decode("utf-8"))
            else:
                await self._websocket.send_bytes(frame.payload)


def open_sink(websocket: WebSocket, *, max_buffer_bytes: int, queue_max: int) -> TransportSink | AsgiSink:
    """The fastest sink available for an accepted ``websocket``.

    The direct path is taken only when the connection negotiated no extension (our prebuilt
    frames are uncompressed): the CLI runs uvicorn with ``ws_per_message_deflate=False``.
    """
    protocol = websocket.scope.get(_PROTOCOL_KEY)
    if protocol is not None and not protocol.conn.extensions:
        return TransportSink(protocol, max_buffer_bytes)
    return AsgiSink(websocket, queue_max)
