"""Sans-I/O y-websocket protocol: strict decoding of client frames and encoding of server frames.

Pure functions, no awaits, no sockets. Every decoder checks bounds and consumes the whole frame,
so a truncated or padded frame is a ``BadMessage`` rather than an ``IndexError`` deep inside.
Wire format (y-protocols): ``varUint messageType`` then, for SYNC, ``varUint syncType`` and a
length-prefixed payload; for AWARENESS, a length-prefixed awareness update.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import IntEnum

from pycrdt import get_state

from .errors import BadMessage, FrameTooLarge


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


EMPTY_UPDATE = b"\x00\x00"
_AUTH_PERMISSION_DENIED = 0
_MAX_VAR_UINT_BYTES = 8  # 2**53, the largest integer a JavaScript client can encode


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class DocUpdate:
    """A SYNC_STEP2 or SYNC_UPDATE payload: both carry a Yjs v1 update."""

    update: bytes
    step2: bool


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state_json: str  # the JSON text as sent; "null" removes the client's state

    @property
    def removed(self) -> bool:
        return self.state_json == "null"


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


ClientMessage = SyncStep1 | DocUpdate | AwarenessUpdate | QueryAwareness


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def var_uint(self) -> int:
        value = 0
        for i in range(_MAX_VAR_UINT_BYTES):
            if self.pos >= len(self.buf):
                raise BadMessage("truncated varUint")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value
        raise BadMessage(f"varUint longer than {_MAX_VAR_UINT_BYTES} bytes")

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        end = self.pos + length
        if end > len(self.buf):
            raise BadMessage(f"length prefix {length} runs past the end of the frame")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage("string is not UTF-8") from exc

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise BadMessage(f"{len(self.buf) - self.pos} trailing bytes after the message")


def parse_client_frame(frame: bytes, *, max_frame_bytes: int, max_sync_frame_bytes: int) -> ClientMessage:
    """Decode one binary frame from a client.

    Args:
        frame: the WebSocket message payload.
        max_frame_bytes: cap for every message except SYNC_STEP2.
        max_sync_frame_bytes: cap for SYNC_STEP2, which carries a whole offline state on reconnect.

    Returns:
        The decoded message. A SYNC update is checked to decode as a Yjs update, so it cannot
        fail half-way through ``Doc.apply_update``.

    Raises:
        FrameTooLarge: the frame is over its cap.
        BadMessage: anything that is not a well-formed y-websocket client message.
    """
    reader = _Reader(frame)
    kind = reader.var_uint()
    if kind == MessageType.SYNC:
        sync_type = reader.var_uint()
        limit = max_sync_frame_bytes if sync_type == SyncType.STEP2 else max_frame_bytes
        if len(frame) > limit:
            raise FrameTooLarge(f"sync frame of {len(frame)} bytes is over the {limit}-byte limit")
        payload = reader.var_bytes()
        reader.end()
        if sync_type == SyncType.STEP1:
            return SyncStep1(_checked_state_vector(payload))
        if sync_type in (SyncType.STEP2, SyncType.UPDATE):
            return DocUpdate(check_update(payload), step2=sync_type == SyncType.STEP2)
        raise BadMessage(f"unknown sync message type {sync_type}")
    if len(frame) > max_frame_bytes:
        raise FrameTooLarge(f"frame of {len(frame)} bytes is over the {max_frame_bytes}-byte limit")
    if kind == MessageType.AWARENESS:
        update = reader.var_bytes()
        reader.end()
        return AwarenessUpdate(parse_awareness_update(update))
    if kind == MessageType.QUERY_AWARENESS:
        reader.end()
        return QueryAwareness()
    raise BadMessage(f"unsupported message type {kind}")


def check_update(update: bytes) -> bytes:
    """Return ``update`` if it decodes as a Yjs v1 update, else raise ``BadMessage``.

    Decoding is what ``apply_update`` would fail on; doing it first keeps a corrupt update away
    from the live document. pycrdt reports decode errors as ``ValueError`` and Rust panics as
    ``BaseException`` subclasses, so both are caught (cancellation and exits are not).
    """
    if update == EMPTY_UPDATE:
        return update
    try:
        get_state(update)
    except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise BadMessage("update does not decode as a Yjs v1 update") from exc
    return update


def _checked_state_vector(state_vector: bytes) -> bytes:
    reader = _Reader(state_vector)
    for _ in range(reader.var_uint()):
        reader.var_uint()  # client id
        reader.var_uint()  # clock
    reader.end()
    return state_vector


def parse_awareness_update(update: bytes) -> tuple[AwarenessEntry, ...]:
    """Decode an awareness update, checking that every state is JSON (y-protocols awareness)."""
    reader = _Reader(update)
    entries = []
    for _ in range(reader.var_uint()):
        client_id = reader.var_uint()
        clock = reader.var_uint()
        state_json = reader.var_string()
        try:
            state = json.loads(state_json)
        except ValueError as exc:
            raise BadMessage("awareness state is not JSON") from exc
        if state is not None and not isinstance(state, dict):
            raise BadMessage(f"awareness state must be an object or null, got {type(state).__name__}")
        entries.append(AwarenessEntry(client_id, clock, state_json))
    reader.end()
    return tuple(entries)


def write_var_uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _var_bytes(data: bytes) -> bytes:
    return write_var_uint(len(data)) + data


def encode_sync_step1(state_vector: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncType.STEP1)) + _var_bytes(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncType.STEP2)) + _var_bytes(update)


def encode_update(update: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncType.UPDATE)) + _var_bytes(update)


def encode_awareness(entries: tuple[AwarenessEntry, ...] | list[AwarenessEntry]) -> bytes:
    body = bytearray(write_var_uint(len(entries)))
    for entry in entries:
        body += write_var_uint(entry.client_id)
        body += write_var_uint(entry.clock)
        body += _var_bytes(entry.state_json.encode("utf-8"))
    return bytes((MessageType.AWARENESS,)) + _var_bytes(bytes(body))


def encode_permission_denied(reason: str) -> bytes:
    """The y-protocols auth message a read-only client gets when its update is refused."""
    return bytes((MessageType.AUTH, _AUTH_PERMISSION_DENIED)) + _var_bytes(reason.encode("utf-8"))
