"""The JSON protocol's wire formats: JSON text, MessagePack (``maily.msgpack.v1``) and compact cursors.

Decoding is strict and bounded (size is checked by the caller; depth, numbers and types here) and
never raises anything but ``InvalidRequest``. Encoding builds each frame once. No sockets here.
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import msgpack

from crdt.frame import OutFrame

from .errors import InvalidRequest

MSGPACK_SUBPROTOCOL = "maily.msgpack.v1"
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: larger integers lose precision
_MAX_INT_DIGITS = 17
_MAX_ID_CHARS = 128

CLIENT_TYPES = frozenset(
    {
        "connection_init",
        "subscribe",
        "unsubscribe",
        "canvas_update",
        "cursor_position",
        "cursor_batch",
        "ai_request",
        "token_refresh",
        "heartbeat",
    }
)

# compact binary cursor frames (docs/PROTOCOL.md "Compact cursor frames"); MessagePack envelopes are
# maps, whose first byte is 0x80-0x8f, 0xde or 0xdf, so these kinds cannot be mistaken for one
COMPACT_CURSOR_POSITION = 0x01
COMPACT_CURSOR_BATCH = 0x02
COMPACT_CURSOR_MOVED = 0x11
_F32X2 = struct.Struct(">ff")
_BATCH_ITEM = struct.Struct(">ffd")
_STATES = {"active": 0, "idle": 1}


class Format(Enum):
    """The encoding a connection negotiated: JSON text frames, or MessagePack binary frames."""

    JSON = "json"
    MSGPACK = "msgpack"


class BadMessage(InvalidRequest):
    """A message that cannot be served; carries the client's message id when it could be read."""

    def __init__(self, message: str, original_message_id: str | int | None = None) -> None:
        super().__init__(message)
        self.original_message_id = original_message_id


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One decoded client message: a known ``type``, its ``data`` object and optional ids."""

    type: str
    data: dict[str, Any]
    id: str | int | None = None
    trace_id: str | None = None


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 UTC to the second, e.g. ``2026-05-20T15:30:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(epoch_s)))


def now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-05-20T15:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- decoding ----------------------------------------------------------------------------------


def decode_text(text: str, *, max_depth: int) -> ClientMessage:
    """Decode a JSON text frame into a ``ClientMessage``.

    Raises:
        BadMessage: not JSON, not an object, nested deeper than ``max_depth``, a number outside
            JavaScript's safe range (or not finite), or a bad envelope field.
    """
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant
        )
    except BadMessage as exc:
        raise BadMessage(str(exc), _salvage_id(text)) from None
    except RecursionError:
        raise BadMessage(f"message nested deeper than {max_depth} levels", _salvage_id(text)) from None
    except ValueError as exc:
        raise BadMessage(f"message is not JSON: {exc}", _salvage_id(text)) from None
    return _envelope(value, max_depth=max_depth, check_types=False)


def _salvage_id(text: str) -> str | int | None:
    """The top-level ``id`` of a JSON text that failed to decode as a whole, when it can be read.

    A single pass tracking nesting and strings (only on the error path): finds the key ``id`` of
    the outermost object and decodes just its value.
    """
    decoder = json.JSONDecoder()
    depth, index, length = 0, 0, len(text)
    expecting_key = False
    try:
        while index < length:
            char = text[index]
            if char == '"':
                string, end = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
                if depth == 1 and expecting_key:
                    colon = end
                    while colon < length and text[colon] in " \t\r\n":
                        colon += 1
                    if string == "id" and colon < length and text[colon] == ":":
                        start = colon + 1
                        while start < length and text[start] in " \t\r\n":
                            start += 1
                        value, _ = decoder.raw_decode(text, start)
                        return message_id({"id": value})
                    expecting_key = False
                index = end
                continue
            if char in "{[":
                depth += 1
                expecting_key = char == "{" and depth == 1
            elif char in "}]":
                depth -= 1
            elif char == "," and depth == 1:
                expecting_key = True
            index += 1
    except (ValueError, RecursionError):
        return None
    return None


def decode_binary(payload: bytes, *, max_depth: int) -> ClientMessage:
    """Decode a binary frame of a ``maily.msgpack.v1`` connection (an envelope or a compact cursor).

    Raises:
        BadMessage: neither a MessagePack map nor a compact cursor frame, or anything
            ``decode_text`` refuses; MessagePack-only types (binary, extensions) are refused too.
    """
    if payload and payload[0] in (COMPACT_CURSOR_POSITION, COMPACT_CURSOR_BATCH):
        return _decode_compact(payload)
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except RecursionError as exc:
        raise BadMessage(f"message nested deeper than {max_depth} levels") from exc
    except Exception as exc:  # msgpack raises several unrelated types on malformed input
        raise BadMessage(f"message is not MessagePack: {type(exc).__name__}") from exc
    return _envelope(value, max_depth=max_depth, check_types=True)


def message_id(value: Any) -> str | int | None:
    """The client's message id in ``value`` if it has a usable one (for ``original_message_id``)."""
    if not isinstance(value, dict):
        return None
    candidate = value.get("id")
    if isinstance(candidate, str) and 0 < len(candidate) <= _MAX_ID_CHARS:
        return candidate
    if isinstance(candidate, int) and not isinstance(candidate, bool) and abs(candidate) <= MAX_SAFE_INTEGER:
        return candidate
    return None


def _envelope(value: Any, *, max_depth: int, check_types: bool) -> ClientMessage:
    if not isinstance(value, dict):
        raise BadMessage(f"message must be an object, got {_kind(value)}")
    original_id = message_id(value)
    try:
        _check_tree(value, max_depth=max_depth, check_types=check_types)
    except BadMessage as exc:
        raise BadMessage(str(exc), original_id) from None
    if "id" in value and value["id"] is not None and original_id is None:
        raise BadMessage(f"id must be a string of 1-{_MAX_ID_CHARS} characters or an integer")
    kind = value.get("type")
    if not isinstance(kind, str):
        raise BadMessage("type must be a string", original_id)
    if kind not in CLIENT_TYPES:
        raise BadMessage(f"unknown message type {kind[:64]!r}", original_id)
    data = value.get("data")
    if not isinstance(data, dict):
        raise BadMessage(f"data must be an object, got {_kind(data)}", original_id)
    trace_id = value.get("traceId")
    if trace_id is not None and (not isinstance(trace_id, str) or not 0 < len(trace_id) <= _MAX_ID_CHARS):
        raise BadMessage(f"traceId must be a string of 1-{_MAX_ID_CHARS} characters", original_id)
    for name in ("sessionId", "timestamp"):
        if value.get(name) is not None and not isinstance(value[name], str):
            raise BadMessage(f"{name} must be a string", original_id)
    return ClientMessage(kind, data, original_id, trace_id)


def _check_tree(root: Any, *, max_depth: int, check_types: bool) -> None:
    """Iteratively check nesting depth (and, for MessagePack, that every value is JSON-compatible)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise BadMessage(f"message nested deeper than {max_depth} levels")
            for key, item in value.items():
                if check_types and not isinstance(key, str):
                    raise BadMessage("object keys must be strings")
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                elif check_types:
                    _check_scalar(item)
        elif isinstance(value, list):
            if depth > max_depth:
                raise BadMessage(f"message nested deeper than {max_depth} levels")
            for item in value:
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                elif check_types:
                    _check_scalar(item)


def _check_scalar(value: Any) -> None:
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise BadMessage(f"integer outside +-{MAX_SAFE_INTEGER}")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadMessage("numbers must be finite")
        return
    raise BadMessage(f"{_kind(value)} values are not allowed (JSON-compatible values only)")


def _parse_int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > _MAX_INT_DIGITS or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise BadMessage(f"integer outside +-{MAX_SAFE_INTEGER}")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadMessage("numbers must be finite")
    return value


def _refuse_constant(name: str) -> Any:
    raise BadMessage(f"{name} is not a JSON number")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string", bytes: "binary"}.get(
        type(value), type(value).__name__
    )


def _decode_compact(payload: bytes) -> ClientMessage:
    kind = payload[0]
    if len(payload) < 2:
        raise BadMessage("truncated compact cursor frame")
    end = 2 + payload[1]
    try:
        canvas_id = payload[2:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage("compact cursor frame: canvas id is not UTF-8") from exc
    body = payload[end:]
    if kind == COMPACT_CURSOR_POSITION:
        if len(body) != _F32X2.size:
            raise BadMessage(f"compact cursor_position frame must be {end + _F32X2.size} bytes")
        x, y = _F32X2.unpack(body)
        return ClientMessage("cursor_position", {"canvasId": canvas_id, "position": _point(x, y)})
    if len(body) < 2:
        raise BadMessage("truncated compact cursor_batch frame")
    (count,) = struct.unpack_from(">H", body)
    if len(body) != 2 + count * _BATCH_ITEM.size:
        raise BadMessage(f"compact cursor_batch frame with {count} positions has the wrong length")
    positions = []
    for x, y, stamp in _BATCH_ITEM.iter_unpack(body[2:]):
        point = _point(x, y)
        if not math.isfinite(stamp):
            raise BadMessage("numbers must be finite")
        point["timestamp"] = stamp
        positions.append(point)
    return ClientMessage("cursor_batch", {"canvasId": canvas_id, "positions": positions})


def _point(x: float, y: float) -> dict[str, Any]:
    if not (math.isfinite(x) and math.isfinite(y)):
        raise BadMessage("numbers must be finite")
    return {"x": x, "y": y}


# -- encoding ----------------------------------------------------------------------------------


def server_message(
    kind: str, session_id: str, data: dict[str, Any], trace_id: str, **top: Any
) -> dict[str, Any]:
    """A server -> client envelope (``top`` adds top-level fields, e.g. an error's mirrored code)."""
    message = {
        "type": kind,
        "sessionId": session_id,
        "timestamp": now_iso(),
        "data": data,
        "traceId": trace_id,
    }
    message.update(top)
    return message


def encode(message: dict[str, Any], fmt: Format) -> OutFrame:
    """Frame one server message for a connection of format ``fmt``."""
    if fmt is Format.JSON:
        return OutFrame(dump_json(message), text=True)
    return OutFrame(msgpack.packb(message), text=False)


def dump_json(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (the payload of a publication, or a text frame)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class Delivery:
    """A channel publication as this node sends it: each format's frame built once, on first use.

    ``payload`` is a JSON object without ``channel``/``offset``; those are added here, so the
    publisher encodes its message once, before the broker numbered it.
    """

    __slots__ = ("_compact", "_json", "_msgpack", "channel", "offset", "payload", "publisher")

    def __init__(self, channel: str, offset: int | None, payload: bytes, publisher: str | None) -> None:
        self.channel = channel
        self.offset = offset
        self.payload = payload
        self.publisher = publisher
        self._json: OutFrame | None = None
        self._msgpack: OutFrame | None = None
        self._compact: OutFrame | bool | None = None

    def frame(self, fmt: Format, *, compact_cursors: bool = False) -> OutFrame:
        """The frame for a connection of format ``fmt`` (compact for cursor_moved when asked)."""
        if fmt is Format.JSON:
            if self._json is None:
                head = (
                    b'{"channel":'
                    + json.dumps(self.channel).encode()
                    + (b',"offset":%d,' % self.offset if self.offset is not None else b',"offset":null,')
                )
                self._json = OutFrame(head + self.payload[1:], text=True)
            return self._json
        if compact_cursors:
            if self._compact is None:
                self._compact = _compact_cursor_moved(json.loads(self.payload)) or False
            if isinstance(self._compact, OutFrame):
                return self._compact
        if self._msgpack is None:
            message = {"channel": self.channel, "offset": self.offset, **json.loads(self.payload)}
            self._msgpack = OutFrame(msgpack.packb(message), text=False)
        return self._msgpack


def _compact_cursor_moved(message: dict[str, Any]) -> OutFrame | None:
    """``cursor_moved`` as a compact frame, or None when the message is not one or does not fit."""
    if message.get("type") != "cursor_moved":
        return None
    try:  # server-side publishers may send any data under this type: only the usual shape is compacted
        data = message["data"]
        strings = [s.encode("utf-8") for s in (data["canvasId"], data["user"]["id"], data["user"]["name"])]
        position = data["position"]
    except (KeyError, TypeError, AttributeError):
        return None
    if any(len(s) > 255 for s in strings):
        return None
    try:
        body = bytearray((COMPACT_CURSOR_MOVED, _STATES.get(data.get("state", "active"), 0)))
        body += _F32X2.pack(position["x"], position["y"])
    except (OverflowError, struct.error, KeyError, TypeError, AttributeError):
        return None  # beyond float32, or not the usual shape: the MessagePack envelope carries it
    for s in strings:
        body.append(len(s))
        body += s
    return OutFrame(bytes(body), text=False)
