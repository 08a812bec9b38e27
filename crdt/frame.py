"""Outbound WebSocket messages, framed once and shared by every receiver.

A server frame is unmasked (RFC 6455 section 5.1), so the same bytes serve every connection.
"""

from __future__ import annotations

import struct

_OPCODE_TEXT = 0x1
_OPCODE_BINARY = 0x2
_OPCODE_CLOSE = 0x8
_MAX_CLOSE_REASON_BYTES = 123  # a control frame carries at most 125 bytes, 2 of them the code
_FIN = 0x80


class OutFrame:
    """One outbound message: the payload, and its RFC 6455 wire encoding built at most once.

    Fan-out creates one ``OutFrame`` per update and hands the same object to every peer; a sink
    that writes straight to a transport uses ``wire``, one that goes through ASGI uses ``payload``.
    """

    __slots__ = ("_wire", "payload", "text")

    def __init__(self, payload: bytes, *, text: bool = False) -> None:
        self.payload = payload
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        """The complete, unmasked, unfragmented server frame (FIN set, no extensions)."""
        if self._wire is None:
            opcode = _OPCODE_TEXT if self.text else _OPCODE_BINARY
            self._wire = _frame_header(len(self.payload), opcode) + self.payload
        return self._wire

    def __len__(self) -> int:
        return len(self.payload)


def close_frame(code: int, reason: str) -> bytes:
    """A complete server close frame with ``code``; ``reason`` is cut to fit a control frame."""
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:_MAX_CLOSE_REASON_BYTES]
    return _frame_header(len(payload), _OPCODE_CLOSE) + payload


def _frame_header(length: int, opcode: int) -> bytes:
    first = _FIN | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)
