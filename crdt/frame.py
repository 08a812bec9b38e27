"""Outbound WebSocket messages, framed once and shared by every receiver.

A server frame is unmasked (RFC 6455 section 5.1), so the same bytes serve every connection.
"""

from __future__ import annotations

import struct

_OPCODE_TEXT = 0x1
_OPCODE_BINARY = 0x2
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
            self._wire = _frame_header(len(self.payload), self.text) + self.payload
        return self._wire

    def __len__(self) -> int:
        return len(self.payload)


def _frame_header(length: int, text: bool) -> bytes:
    first = _FIN | (_OPCODE_TEXT if text else _OPCODE_BINARY)
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)
