"""The JSON protocol's client messages: one frame in, its checks, and the handler for its ``type``.

``Dispatcher.handle_frame`` never raises for anything a client can send: bad input becomes an
``error`` on the connection, a fault becomes ``INTERNAL_ERROR``, and only limits end the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from crdt.canvas import ELEMENT_ACTIONS, LAYER_ACTIONS, Actor, Edit, is_number, to_json
from crdt.errors import CrdtError, RoomClosed

from .assistant import AiRequest
from .auth import CANVAS_ID, Role
from .channels import Channel, authorize_subscribe, canvas_channel, parse_channel
from .codec import BadMessage, ClientMessage, Format, decode_binary, decode_text, iso_utc, now_iso
from .errors import (
    AiUnavailable,
    AppError,
    Forbidden,
    MessageTooLarge,
    RateLimited,
)
from .gateway import Gateway, Since
from .limits import Strikes
from .session import PendingAck, Seat, Session, new_trace_id

log = logging.getLogger(__name__)

_MAX_ELEMENT_ID = 128
Handler = Callable[[Session, ClientMessage, str], Awaitable[None]]


class Dispatcher:
    """Turns frames of one connection into handler calls. One instance per connection.

    Args:
        gateway: the node's services.
        session: the connection's session.
        spawn: starts a task in the connection's task group (AI answers run there).
    """

    def __init__(
        self, gateway: Gateway, session: Session, spawn: Callable[[Awaitable[None]], object]
    ) -> None:
        self.gateway = gateway
        self.session = session
        self._spawn = spawn
        settings = gateway.settings
        self._max_bytes = settings.max_message_bytes
        self._max_depth = settings.max_message_depth
        self._strikes = Strikes(settings.rate_limit_close_after, settings.rate_limit_per_s / 2)
        self._handlers: dict[str, Handler] = {
            "connection_init": self._connection_init,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "canvas_update": self._canvas_update,
            "cursor_position": self._cursor,
            "cursor_batch": self._cursor,
            "ai_request": self._ai_request,
            "token_refresh": self._token_refresh,
            "heartbeat": self._heartbeat,
        }

    async def handle_frame(self, text: str | None, payload: bytes | None) -> None:
        """Handle one inbound WebSocket message (``text`` for text frames, ``payload`` for binary)."""
        session = self.session
        try:
            message = self._decode(text, payload)
        except MessageTooLarge as exc:
            session.fail(exc)
            return
        except BadMessage as exc:
            log.warning("invalid message", extra={"session_id": session.session_id, "detail": str(exc)})
            if self._admit(exc.original_message_id, None):
                session.send_error(exc, original_message_id=exc.original_message_id)
            return
        if not self._admit(message.id, message.trace_id):
            return
        trace_id = message.trace_id or new_trace_id()
        try:
            await self._handlers[message.type](session, message, trace_id)
        except (AppError, CrdtError) as exc:
            session.send_error(exc, original_message_id=message.id, trace_id=trace_id)
        except Exception:
            log.exception(
                "message handler failed", extra={"session_id": session.session_id, "type": message.type}
            )
            session.send_error(_internal(), original_message_id=message.id, trace_id=trace_id)
        finally:
            # resume is honoured only on a session's first message; a refused connection_init
            # (e.g. a malformed offset) did nothing, so the client may send a corrected one
            if message.type != "connection_init" or session.initialised:
                session.resumable = False

    def _decode(self, text: str | None, payload: bytes | None) -> ClientMessage:
        fmt = self.session.fmt
        if text is not None:
            if len(text) > self._max_bytes or (
                len(text) * 4 > self._max_bytes and len(text.encode("utf-8")) > self._max_bytes
            ):
                raise MessageTooLarge(f"message over the {self._max_bytes}-byte limit")
            if fmt is not Format.JSON:
                raise BadMessage("text frames are not allowed on a maily.msgpack.v1 connection")
            return decode_text(text, max_depth=self._max_depth)
        data = payload or b""
        if len(data) > self._max_bytes:
            raise MessageTooLarge(f"message of {len(data)} bytes is over the {self._max_bytes}-byte limit")
        if fmt is Format.JSON:
            raise BadMessage("binary frames need the maily.msgpack.v1 subprotocol")
        return decode_binary(data, max_depth=self._max_depth)

    def _admit(self, original_id: str | int | None, trace_id: str | None) -> bool:
        """Apply the per-user rate; False (after telling the client) when the message is dropped."""
        session = self.session
        if self.gateway.rate.allow(session.user_id):
            return True
        error = RateLimited(f"over {self.gateway.settings.rate_limit_per_s:g} messages/s for this user")
        session.send_error(error, original_message_id=original_id, trace_id=trace_id)
        if self._strikes.hit():
            log.warning("rate limit persists, closing", extra={"session_id": session.session_id})
            session.fail(error)
        return False

    # -- handlers ------------------------------------------------------------------------------

    async def _connection_init(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        data = message.data
        if session.initialised:
            raise BadMessage("connection_init was already received on this connection", message.id)
        _optional(data, "clientInfo", dict, message)
        compact = _optional(data, "compactCursors", bool, message)
        resume = _optional(data, "resume", dict, message)
        offsets: dict[str, Since | None] = {}
        if resume is not None:
            _required(resume, "sessionId", str, message, "resume.sessionId")
            raw_offsets = _optional(resume, "offsets", dict, message, "resume.offsets") or {}
            # all checked before the parked session is taken: a bad one must not cost the others
            offsets = {
                name: _since(value, message, f"resume.offsets.{name}") for name, value in raw_offsets.items()
            }
        session.initialised = True
        session.compact_cursors = bool(compact) and session.fmt is Format.MSGPACK
        state = None
        if resume is not None and session.resumable:
            state = await self.gateway.resume(session, resume["sessionId"])
        settings = self.gateway.settings
        ack: dict[str, Any] = {
            "sessionId": session.session_id,
            "userId": session.user_id,
            "resumed": state is not None,
            "heartbeatIntervalMs": int(settings.heartbeat_interval_s * 1000),
            "limits": {
                "maxMessageBytes": settings.max_message_bytes,
                "messagesPerSecond": settings.rate_limit_per_s,
                "maxChannels": settings.max_channels_per_connection,
                "maxConnectionsPerUser": settings.max_connections_per_user,
                "maxUsersPerCanvas": settings.max_users_per_canvas,
                "idleTimeoutMs": int(settings.idle_timeout_s * 1000),
                "sessionTtlMs": int(settings.session_ttl_s * 1000),
                "historyTtlMs": int(settings.history_ttl_s * 1000),
            },
            "compactCursors": session.compact_cursors,
        }
        if state is not None:
            ack["subscriptions"] = sorted(state.channels)
        session.send("connection_ack", ack, trace_id)
        if state is None:
            return
        for name, position in sorted(state.channels.items()):
            since = offsets.get(name) or Since(position.offset, position.epoch)
            if since.epoch is None:
                since = Since(since.offset, position.epoch)
            try:
                await self.gateway.subscribe(session, parse_channel(name), since=since, trace_id=trace_id)
            except (AppError, CrdtError) as exc:
                session.send_error(exc, original_message_id=message.id, trace_id=trace_id, channel=name)

    async def _subscribe(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        data = message.data
        channel = self._channel(data, message)
        options = _optional(data, "options", dict, message) or {}
        history = _optional(options, "history", bool, message, "options.history") or False
        since = _since(options.get("since"), message, "options.since")
        try:
            await self.gateway.subscribe(session, channel, since=since, history=history, trace_id=trace_id)
        except (AppError, CrdtError) as exc:
            session.send_error(exc, original_message_id=message.id, trace_id=trace_id, channel=channel.name)

    async def _unsubscribe(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        channel = self._channel(message.data, message)
        await self.gateway.unsubscribe(session, channel.name)
        session.send("unsubscribed", {"channel": channel.name}, trace_id, channel=channel.name)

    async def _canvas_update(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        data = message.data
        canvas_id = self._canvas_id(data, message)
        action = _required(data, "action", str, message)
        if action not in ELEMENT_ACTIONS | LAYER_ACTIONS:
            raise BadMessage(
                f"action must be one of {sorted(ELEMENT_ACTIONS | LAYER_ACTIONS)}, got {action[:32]!r}",
                message.id,
            )
        element_id = _optional(data, "elementId", str, message)
        layer_id = _optional(data, "layerId", str, message)
        for name, value in (("elementId", element_id), ("layerId", layer_id)):
            if value is not None and not 0 < len(value) <= _MAX_ELEMENT_ID:
                raise BadMessage(f"{name} must be 1-{_MAX_ELEMENT_ID} characters", message.id)
        properties = _optional(data, "properties", dict, message)
        position = _optional(data, "position", dict, message)
        if action in LAYER_ACTIONS:
            element_id = None
        elif action == "add" and element_id is None and isinstance((properties or {}).get("id"), str):
            element_id = properties["id"]  # type: ignore[index]
        role = session.principal.canvas_role(canvas_id)
        if role < Role.WRITE:
            raise Forbidden(f"no write permission on canvas {canvas_id}")
        actor = Actor(session.user_id, session.principal.name, overrides_locks=role >= Role.ADMIN)
        edit = Edit(action, element_id, layer_id, properties, position)
        seat = await _live_seat(self.gateway, session, canvas_id)
        if seat is not None:
            tag = self.gateway.bridge.edit(
                seat.room, actor, edit, session_id=session.session_id, trace_id=trace_id
            )
        else:
            async with self.gateway.rooms.lease(canvas_id) as room:
                tag = self.gateway.bridge.edit(
                    room, actor, edit, session_id=session.session_id, trace_id=trace_id
                )
        if message.id is not None:
            session.acks.put_nowait(PendingAck(message.id, trace_id, tag.log_seq, tag.publications))

    async def _cursor(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        data = message.data
        canvas_id = self._canvas_id(data, message)
        if message.type == "cursor_position":
            positions = [_point(_required(data, "position", dict, message), message, "position", stamp=False)]
        else:
            raw = _required(data, "positions", list, message)
            limit = self.gateway.settings.max_cursor_batch
            if not 0 < len(raw) <= limit:
                raise BadMessage(f"positions must hold 1-{limit} points", message.id)
            positions = [_point(p, message, f"positions[{i}]", stamp=True) for i, p in enumerate(raw)]
        seat = await _live_seat(self.gateway, session, canvas_id)
        if seat is None:
            raise BadMessage(
                f"subscribe to {canvas_channel(canvas_id)} or {canvas_channel(canvas_id, 'cursor')} "
                "before sending cursors",
                message.id,
            )
        seat.clock += 1
        self.gateway.bridge.cursor(
            seat.room,
            session_id=session.session_id,
            user_id=session.user_id,
            user_name=session.principal.name,
            client_id=seat.client_id,
            clock=seat.clock,
            positions=positions,
            trace_id=trace_id,
        )

    async def _ai_request(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        data = message.data
        canvas_id = self._canvas_id(data, message)
        prompt = _required(data, "prompt", str, message)
        limit = self.gateway.settings.max_prompt_chars
        if not 0 < len(prompt) <= limit:
            raise BadMessage(f"prompt must be 1-{limit} characters", message.id)
        context = _optional(data, "context", dict, message) or {}
        selected = _optional(context, "selectedElements", list, message, "context.selectedElements") or []
        if not all(isinstance(item, str) for item in selected):
            raise BadMessage("context.selectedElements must be a list of element ids", message.id)
        if session.principal.canvas_role(canvas_id) < Role.WRITE:
            raise Forbidden(f"no write permission on canvas {canvas_id}")
        assistant = self.gateway.assistant
        if not assistant.available:
            raise AiUnavailable("AI assistance is not available on this server")
        if session.ai_busy:
            raise RateLimited("one AI request at a time per connection")
        request_id = str(message.id) if message.id is not None else new_trace_id()
        seat = await _live_seat(self.gateway, session, canvas_id)
        if seat is not None:
            canvas = to_json(seat.room.doc)
        else:
            async with self.gateway.rooms.lease(canvas_id) as room:
                canvas = to_json(room.doc)
        request = AiRequest(canvas_id, request_id, prompt, canvas, tuple(selected), session.user_id)
        session.ai_busy = True
        self._spawn(self._answer(request, message.id, trace_id))

    async def _answer(self, request: AiRequest, original_id: str | int | None, trace_id: str) -> None:
        session = self.session
        assistant = self.gateway.assistant
        channel = canvas_channel(request.canvas_id, "ai")
        publisher = assistant.identity.id
        try:
            batches = []
            async for batch in assistant.answer(request):
                batches.append([suggestion.to_wire() for suggestion in batch])
            for index, batch in enumerate(batches or [[]]):
                data = {
                    "canvasId": request.canvas_id,
                    "requestId": request.request_id,
                    "suggestions": batch,
                    "done": index == max(len(batches), 1) - 1,
                }
                await self.gateway.publish(
                    channel, "ai_response", data, publisher=publisher, trace_id=trace_id
                )
        except Exception:
            log.exception("assistant failed", extra={"session_id": session.session_id})
            session.send_error(
                AiUnavailable("the AI assistant failed to answer"),
                original_message_id=original_id,
                trace_id=trace_id,
            )
        finally:
            session.ai_busy = False

    async def _token_refresh(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        token = _required(message.data, "token", str, message)
        principal = self.gateway.auth.verify(token)  # AuthFailed: an error; the current token stays
        if principal.user_id != session.user_id:
            raise Forbidden("the new token belongs to another user")
        session.principal = principal
        session.token_warned = False
        session.timers_changed.set()
        for name in list(session.subscriptions):
            try:
                authorize_subscribe(principal, parse_channel(name))
            except Forbidden:
                await self.gateway.unsubscribe(session, name)
                session.send("unsubscribed", {"channel": name, "reason": "forbidden"}, trace_id, channel=name)
        expires = iso_utc(principal.expires_at)
        session.send("token_refreshed", {"expiresAt": expires}, trace_id)

    async def _heartbeat(self, session: Session, message: ClientMessage, trace_id: str) -> None:
        stamp = message.data.get("timestamp")
        if stamp is not None and (not isinstance(stamp, str | int | float) or isinstance(stamp, bool)):
            raise BadMessage("timestamp must be a string or a number", message.id)
        data: dict[str, Any] = {"timestamp": now_iso()}
        if stamp is not None:
            data["clientTimestamp"] = stamp
        session.send("heartbeat_ack", data, trace_id)

    # -- field helpers ------------------------------------------------------------------------

    def _channel(self, data: dict[str, Any], message: ClientMessage) -> Channel:
        try:
            return parse_channel(data.get("channel"))
        except AppError as exc:
            raise BadMessage(str(exc), message.id) from None

    def _canvas_id(self, data: dict[str, Any], message: ClientMessage) -> str:
        canvas_id = _required(data, "canvasId", str, message)
        if not CANVAS_ID.match(canvas_id):
            raise BadMessage("canvasId must match ^[A-Za-z0-9_-]{1,64}$", message.id)
        return canvas_id


async def _live_seat(gateway: Gateway, session: Session, canvas_id: str) -> Seat | None:
    """The session's seat on ``canvas_id``, unless its room was closed under it (canvas deleted).

    Raises:
        RoomClosed: the room was closed: the session's channels of that canvas are dropped
            (``unsubscribed`` with reason ``canvas_closed``); subscribing again loads a fresh room.
    """
    seat = session.seats.get(canvas_id)
    if seat is None or not seat.room.closed:
        return seat
    for name in sorted(seat.channels):
        await gateway.unsubscribe(session, name)
        session.send("unsubscribed", {"channel": name, "reason": "canvas_closed"}, channel=name)
    raise RoomClosed(f"canvas {canvas_id} was closed on this node; subscribe to it again")


def _required(
    data: dict[str, Any], key: str, kind: type, message: ClientMessage, label: str | None = None
) -> Any:
    value = data.get(key)
    if value is None:
        raise BadMessage(f"data.{label or key} is required", message.id)
    return _typed(value, kind, message, label or key)


def _optional(
    data: dict[str, Any], key: str, kind: type, message: ClientMessage, label: str | None = None
) -> Any:
    value = data.get(key)
    return None if value is None else _typed(value, kind, message, label or key)


def _typed(value: Any, kind: type, message: ClientMessage, label: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = {str: "a string", dict: "an object", list: "an array", bool: "a boolean"}
        raise BadMessage(f"data.{label} must be {names.get(kind, kind.__name__)}", message.id)
    return value


def _point(value: Any, message: ClientMessage, label: str, *, stamp: bool) -> dict[str, Any]:
    if not isinstance(value, dict) or not is_number(value.get("x")) or not is_number(value.get("y")):
        raise BadMessage(f"data.{label} must be {{x, y}} with numbers", message.id)
    point = {"x": value["x"], "y": value["y"]}
    if stamp and value.get("timestamp") is not None:
        if not is_number(value["timestamp"]) and not isinstance(value["timestamp"], str):
            raise BadMessage(f"data.{label}.timestamp must be a number or a string", message.id)
        point["timestamp"] = value["timestamp"]
    return point


def _since(value: Any, message: ClientMessage, label: str) -> Since | None:
    if value is None:
        return None
    if is_number(value) and isinstance(value, int) and value >= 0:
        return Since(value)
    if isinstance(value, dict):
        offset, epoch = value.get("offset"), value.get("epoch")
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            if epoch is None or isinstance(epoch, str):
                return Since(offset, epoch)
    raise BadMessage(f"{label} must be an offset (integer >= 0) or {{offset, epoch}}", message.id)


def _internal() -> AppError:
    return AppError("the server failed to handle this message")
