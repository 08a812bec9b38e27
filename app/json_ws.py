"""WebSocket adapter of the JSON channel protocol: ``/api/v1/ws/connect`` and its alias ``/ws``.

I/O only: authenticate before accepting, count the connection, then run the reader, the timers
(idle timeout, token expiry) and the durable-ack writer until the session ends, and close with the
session's code. Protocol logic lives in ``app/handlers.py`` and ``app/gateway.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from fastapi import APIRouter, WebSocket
from starlette.routing import WebSocketRoute

from crdt.errors import CrdtError, PeerLeft

from .codec import MSGPACK_SUBPROTOCOL, Format, iso_utc
from .errors import AppError, AuthFailed, IdleTimeout, TokenExpired, TooManyConnections, close_code_for
from .gateway import Gateway
from .handlers import Dispatcher
from .node import Node
from .session import Session
from .transport import AsgiSink, TransportSink, open_sink
from .ws import BEARER_SUBPROTOCOL_PREFIX, authenticate, close, deny

log = logging.getLogger(__name__)


async def json_socket(websocket: WebSocket) -> None:
    """One JSON-protocol client: JSON text frames, or MessagePack with subprotocol ``maily.msgpack.v1``."""
    node: Node = websocket.state.node
    gateway = node.gateway
    try:
        principal, _ = authenticate(websocket, node)
    except AppError as error:
        await deny(websocket, error)
        return
    offered = [
        p for p in websocket.scope.get("subprotocols", []) if not p.startswith(BEARER_SUBPROTOCOL_PREFIX)
    ]
    fmt = Format.MSGPACK if MSGPACK_SUBPROTOCOL in offered else Format.JSON
    subprotocol = MSGPACK_SUBPROTOCOL if fmt is Format.MSGPACK else (offered[0] if offered else None)
    if not await gateway.connections.acquire(principal.user_id):
        error = TooManyConnections(f"at most {node.settings.max_connections_per_user} connections per user")
        log.info("websocket refused", extra={"reason": error.code, "user_id": principal.user_id})
        await websocket.accept(subprotocol=subprotocol)
        await websocket.close(code=close_code_for(error), reason=error.code)
        return
    try:
        await websocket.accept(subprotocol=subprotocol)
        settings = node.settings
        sink = open_sink(
            websocket, max_buffer_bytes=settings.peer_buffer_max_bytes, queue_max=settings.peer_queue_max
        )
        session = Session(principal, fmt, sink)
        await gateway.attach(session)
        log.info(
            "json session connected",
            extra={"session_id": session.session_id, "user_id": session.user_id, "format": fmt.value},
        )
        try:
            error = await _serve(websocket, gateway, session, sink)
        finally:
            await gateway.detach(session)
        await close(websocket, sink, error)
        log.info(
            "json session closed",
            extra={
                "session_id": session.session_id,
                "code": int(close_code_for(error)),
                "reason": error.code,
            },
        )
    finally:
        if await gateway.connections.release(principal.user_id) == 0:
            gateway.rate.forget(principal.user_id)


async def _serve(
    websocket: WebSocket, gateway: Gateway, session: Session, sink: TransportSink | AsgiSink
) -> CrdtError | AppError:
    """Run the connection's tasks until the session fails; returns why it ended."""
    async with asyncio.TaskGroup() as tasks:
        spawned: set[asyncio.Task[None]] = set()

        def spawn(coro: Awaitable[None]) -> object:
            task: asyncio.Task[None] = tasks.create_task(coro)  # type: ignore[arg-type]
            spawned.add(task)
            task.add_done_callback(spawned.discard)
            return task

        dispatcher = Dispatcher(gateway, session, spawn)
        workers = [
            tasks.create_task(_read(websocket, session, dispatcher)),
            tasks.create_task(_timers(gateway, session)),
            tasks.create_task(_acks(gateway, session)),
            tasks.create_task(sink.run()),
        ]
        error = await session.wait_failed()
        for task in [*workers, *spawned]:  # spawned: AI answers still running
            task.cancel()
    return error


async def _read(websocket: WebSocket, session: Session, dispatcher: Dispatcher) -> None:
    loop = asyncio.get_running_loop()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            session.fail(PeerLeft("client closed"))
            return
        session.last_frame = loop.time()  # the timers task sees it when the old deadline comes
        await dispatcher.handle_frame(message.get("text"), message.get("bytes"))


async def _timers(gateway: Gateway, session: Session) -> None:
    """Idle timeout (4010), ``token_expiring`` ahead of expiry, and expiry itself (4001)."""
    settings = gateway.settings
    loop = asyncio.get_running_loop()
    while True:
        session.timers_changed.clear()
        now, wall = loop.time(), time.time()
        expires_at = session.principal.expires_at
        if wall >= expires_at:
            error = TokenExpired("token expired")
            session.send_error(AuthFailed("token expired; reconnect with a fresh token"))
            session.fail(error)
            return
        idle_deadline = session.last_frame + settings.idle_timeout_s
        if now >= idle_deadline:
            session.fail(IdleTimeout(f"no frame for {settings.idle_timeout_s:g} s"))
            return
        warn_at = expires_at - settings.token_expiring_before_s
        if not session.token_warned and wall >= warn_at:
            session.token_warned = True
            data = {"expiresAt": iso_utc(expires_at), "expiresInMs": int((expires_at - wall) * 1000)}
            session.send("token_expiring", data)
        waits = [idle_deadline - now, expires_at - wall]
        if not session.token_warned:
            waits.append(warn_at - wall)
        try:
            async with asyncio.timeout(max(min(waits), 0.005)):
                await session.timers_changed.wait()
        except TimeoutError:
            pass


async def _acks(gateway: Gateway, session: Session) -> None:
    """Send each ``ack`` once its change is durable, in the order the changes were made."""
    while True:
        pending = await session.acks.get()
        if pending.log_seq is not None:
            await gateway.update_log.wait_durable(pending.log_seq)
        data: dict[str, object] = {"messageId": pending.message_id}
        for future in pending.publications:
            try:
                publication = await future
            except Exception:
                continue  # the change is durable; only its announcement failed (logged by the publisher)
            data["offset"] = publication.offset
            data["channel"] = publication.channel
        session.send("ack", data, pending.trace_id)


# plain Starlette routes, as for /yjs: FastAPI's dependency machinery costs kilobytes per connection
router = APIRouter()
router.routes.append(WebSocketRoute("/api/v1/ws/connect", json_socket, name="json"))
router.routes.append(WebSocketRoute("/ws", json_socket, name="json_alias"))
