"""WebSocket adapters: Starlette WebSocket <-> ``crdt.Peer``. No y-protocol parsing here.

``/yjs/{canvas_id}`` speaks the standard y-websocket protocol (PROTOCOL.md section 1).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from fastapi import APIRouter, WebSocket
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute

from crdt.errors import BadMessage, CrdtError, PeerLeft, SlowConsumer
from crdt.peer import FrameSink, Peer
from crdt.room import Room

from .auth import Principal, Role, check_canvas_id
from .errors import AppError, Forbidden, TokenExpired, close_code_for, http_status_for
from .node import Node
from .transport import AsgiSink, TransportSink, open_sink

log = logging.getLogger(__name__)

BEARER_SUBPROTOCOL_PREFIX = "bearer."
_CLOSE_TIMEOUT_S = 2.0


async def yjs_socket(websocket: WebSocket) -> None:
    """One y-websocket client of canvas ``canvas_id``: authenticate, seat, relay until it leaves.

    A plain Starlette route, not a FastAPI one: FastAPI's dependency machinery costs about 8 KB
    and two exit stacks per connection, and this endpoint has no dependencies to solve.
    """
    canvas_id: str = websocket.path_params["canvas_id"]
    node: Node = websocket.state.node
    try:
        principal, subprotocol = authenticate(websocket, node)
        check_canvas_id(canvas_id)
        role = principal.canvas_role(canvas_id)
        if role < Role.READ:
            raise Forbidden(f"no read permission on canvas {canvas_id}")
    except AppError as error:
        await deny(websocket, error)
        return
    await websocket.accept(subprotocol=subprotocol)
    settings = node.settings
    sink = open_sink(
        websocket, max_buffer_bytes=settings.peer_buffer_max_bytes, queue_max=settings.peer_queue_max
    )
    peer = Peer(
        f"p_{secrets.token_hex(6)}",
        principal.user_id,
        principal.name,
        can_write=role >= Role.WRITE,
        sink=sink,
    )
    log.info(
        "yjs peer connected", extra={"canvas_id": canvas_id, "peer_id": peer.peer_id, "user_id": peer.user_id}
    )
    error: CrdtError | AppError
    try:
        async with node.rooms.join(canvas_id, peer) as room:
            error = await _relay(websocket, room, peer, sink, principal)
    except (CrdtError, AppError) as exc:
        error = exc
    await close(websocket, peer.sink, error)
    log.info(
        "yjs peer closed",
        extra={
            "canvas_id": canvas_id,
            "peer_id": peer.peer_id,
            "code": int(close_code_for(error)),
            "reason": error.code,
        },
    )


async def _relay(
    websocket: WebSocket, room: Room, peer: Peer, sink: TransportSink | AsgiSink, principal: Principal
) -> CrdtError | AppError:
    """Run the reader (and the ASGI writer, if any) until the peer fails or its token expires."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (principal.expires_at - time.time())
    async with asyncio.TaskGroup() as tasks:
        reader = tasks.create_task(_read(websocket, room, peer))
        writer = tasks.create_task(sink.run())
        try:
            async with asyncio.timeout_at(deadline):
                error: CrdtError | AppError = await peer.wait_failed()
        except TimeoutError:
            error = TokenExpired("token expired")
        reader.cancel()
        writer.cancel()
    return error


async def _read(websocket: WebSocket, room: Room, peer: Peer) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            peer.fail(PeerLeft("client closed"))
            return
        data = message.get("bytes")
        if data is None:
            peer.fail(BadMessage("text frames are not part of the y-websocket protocol"))
            return
        try:
            room.receive(peer, data)
        except CrdtError as error:
            log.warning(
                "bad frame from peer",
                extra={
                    "canvas_id": room.canvas_id,
                    "peer_id": peer.peer_id,
                    "reason": error.code,
                    "detail": str(error),
                },
            )
            peer.fail(error)
            return


def authenticate(websocket: WebSocket, node: Node) -> tuple[Principal, str | None]:
    """Verify the token from ``?token=``, ``Authorization: Bearer`` or a ``bearer.<JWT>`` subprotocol.

    Returns the principal and the subprotocol to accept (the first offered one that is not the
    token carrier). Raises ``AuthFailed`` or ``Forbidden`` (disallowed Origin).
    """
    allowed = node.settings.allowed_origins
    origin = websocket.headers.get("origin")
    if allowed and origin is not None and origin not in allowed:
        raise Forbidden("origin not allowed")
    token = websocket.query_params.get("token")
    header = websocket.headers.get("authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    offered = websocket.scope.get("subprotocols", [])
    carried = [p for p in offered if p.startswith(BEARER_SUBPROTOCOL_PREFIX)]
    if not token and carried:
        token = carried[0][len(BEARER_SUBPROTOCOL_PREFIX) :]
    others = [p for p in offered if not p.startswith(BEARER_SUBPROTOCOL_PREFIX)]
    return node.auth.verify(token), (others[0] if others else None)


async def deny(websocket: WebSocket, error: AppError) -> None:
    """Refuse the upgrade with an HTTP status (401/403/422) before any document byte is sent."""
    log.info("websocket refused", extra={"reason": error.code, "detail": str(error)})
    status = http_status_for(error.code)
    body = {"error": {"code": error.wire_code, "message": str(error)}}
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(body, status_code=status))
    else:
        await websocket.accept()
        await websocket.close(code=close_code_for(error), reason=error.code)


async def close(websocket: WebSocket, sink: FrameSink, error: CrdtError | AppError) -> None:
    """Close the connection with the code for ``error``; abort it when the close cannot get through."""
    if isinstance(error, PeerLeft | SlowConsumer):
        return  # gone already, or aborted by the peer
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await websocket.close(code=close_code_for(error), reason=error.code)
    except (TimeoutError, RuntimeError, OSError):
        sink.abort()


router = APIRouter()
router.routes.append(WebSocketRoute("/yjs/{canvas_id}", yjs_socket, name="yjs"))
