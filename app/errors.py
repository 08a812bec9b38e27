"""Application errors and the only tables that turn error codes into close codes and HTTP statuses."""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from crdt.errors import CrdtError


class AppError(Exception):
    """Base of the gateway's errors; ``code`` is stable, ``wire_code`` is the JSON protocol's name."""

    code: ClassVar[str] = "internal_error"
    wire_code: ClassVar[str] = "INTERNAL_ERROR"
    retryable: ClassVar[bool] = False


class AuthFailed(AppError):
    """Missing, malformed, badly signed or expired token."""

    code = "auth_failed"
    wire_code = "AUTH_FAILED"


class TokenExpired(AuthFailed):
    """The token of an open connection expired."""

    code = "token_expired"


class Forbidden(AppError):
    """Valid token, but the action is not allowed."""

    code = "forbidden"
    wire_code = "FORBIDDEN"


class InvalidRequest(AppError):
    """Bad input: a malformed canvas id, message or field."""

    code = "invalid_message"
    wire_code = "INVALID_MESSAGE"


class NotFound(AppError):
    code = "not_found"
    wire_code = "NOT_FOUND"


class CloseCode(IntEnum):
    """WebSocket close codes (PROTOCOL.md "Errors and close codes"; 45xx: retry with backoff)."""

    NORMAL = 1000
    BAD_DATA = 1007
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012
    AUTH = 4001
    FORBIDDEN = 4003
    RATE_LIMITED = 4008
    TOO_MANY_CONNECTIONS = 4009
    IDLE_TIMEOUT = 4010
    ROOM_FULL = 4029
    CANVAS_DELETED = 4404
    ROOM_UNAVAILABLE = 4503
    SLOW_CONSUMER = 4508


CLOSE_CODES: dict[str, CloseCode] = {
    "bad_message": CloseCode.BAD_DATA,
    "frame_too_large": CloseCode.TOO_BIG,
    "auth_failed": CloseCode.AUTH,
    "token_expired": CloseCode.AUTH,
    "forbidden": CloseCode.FORBIDDEN,
    "rate_limited": CloseCode.RATE_LIMITED,
    "too_many_connections": CloseCode.TOO_MANY_CONNECTIONS,
    "idle_timeout": CloseCode.IDLE_TIMEOUT,
    "room_full": CloseCode.ROOM_FULL,
    "room_closed": CloseCode.CANVAS_DELETED,
    "room_unavailable": CloseCode.ROOM_UNAVAILABLE,
    "slow_consumer": CloseCode.SLOW_CONSUMER,
    "server_shutdown": CloseCode.RESTART,
    "peer_left": CloseCode.NORMAL,
}

HTTP_STATUSES: dict[str, int] = {
    "auth_failed": 401,
    "forbidden": 403,
    "invalid_message": 422,
    "not_found": 404,
    "room_unavailable": 503,
    "storage_unavailable": 503,
}


def close_code_for(error: CrdtError | AppError) -> CloseCode:
    """The close code a client sees for ``error`` (1011 for anything unmapped)."""
    return CLOSE_CODES.get(error.code, CloseCode.INTERNAL)


def http_status_for(code: str) -> int:
    return HTTP_STATUSES.get(code, 500)
