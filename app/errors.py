"""Application errors and the only tables that turn error codes into close codes and HTTP statuses.

Also the REST API's exception handlers: every error becomes ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crdt.errors import CrdtError
from storage.errors import StorageError

log = logging.getLogger(__name__)


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


class MessageTooLarge(AppError):
    """A JSON-protocol message over ``max_message_bytes`` (closes with 1009)."""

    code = "frame_too_large"
    wire_code = "INVALID_MESSAGE"


class RateLimited(AppError):
    """Over the per-user message rate (the message is dropped; closes with 4008 if it persists)."""

    code = "rate_limited"
    wire_code = "RATE_LIMITED"
    retryable = True


class SubscriptionFailed(AppError):
    """A subscription could not be made or restored (channel limit, canvas full, history gap)."""

    code = "subscription_failed"
    wire_code = "SUBSCRIPTION_FAILED"


class TooManyConnections(AppError):
    """The user already has ``max_connections_per_user`` open connections (closes with 4009)."""

    code = "too_many_connections"
    wire_code = "TOO_MANY_CONNECTIONS"
    retryable = True


class IdleTimeout(AppError):
    """No frame for ``idle_timeout_s`` (closes with 4010)."""

    code = "idle_timeout"
    wire_code = "IDLE_TIMEOUT"
    retryable = True


class SessionTakenOver(AppError):
    """Another connection resumed this connection's session (closes with 1000)."""

    code = "session_taken_over"
    wire_code = "SESSION_TAKEN_OVER"


class AiUnavailable(AppError):
    """No AI assistant can answer on this server (an addition to PROTOCOL.md's codes)."""

    code = "ai_unavailable"
    wire_code = "AI_UNAVAILABLE"
    retryable = True


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
    "session_taken_over": CloseCode.NORMAL,
}

# JSON-protocol ``error.code`` for errors raised below the gateway (AppErrors carry ``wire_code``).
WIRE_CODES: dict[str, str] = {
    "edit_refused": "INVALID_MESSAGE",
    "element_locked": "FORBIDDEN",
    "history_unavailable": "SUBSCRIPTION_FAILED",
    "room_full": "SUBSCRIPTION_FAILED",
    "room_closed": "SUBSCRIPTION_FAILED",
    "room_unavailable": "INTERNAL_ERROR",
    "server_shutdown": "INTERNAL_ERROR",
}

HTTP_STATUSES: dict[str, int] = {
    "auth_failed": 401,
    "forbidden": 403,
    "invalid_message": 422,
    "not_found": 404,
    "room_unavailable": 503,
    "storage_unavailable": 503,
    "validation_failed": 422,
    "method_not_allowed": 405,
    "room_closed": 404,
    "server_shutdown": 503,
    "broker_unavailable": 503,
}


def close_code_for(error: CrdtError | AppError) -> CloseCode:
    """The close code a client sees for ``error`` (1011 for anything unmapped)."""
    return CLOSE_CODES.get(error.code, CloseCode.INTERNAL)


def wire_code_for(error: CrdtError | AppError) -> str:
    """The JSON protocol's ``error.code`` for ``error`` (``INTERNAL_ERROR`` for anything unmapped)."""
    if isinstance(error, AppError):
        return error.wire_code
    return WIRE_CODES.get(error.code, "INTERNAL_ERROR")


def http_status_for(code: str) -> int:
    return HTTP_STATUSES.get(code, 500)


# -- REST errors ----------------------------------------------------------------------------------------

# codes for errors Starlette raises itself (unknown route, wrong method)
_HTTP_EXCEPTION_CODES: dict[int, str] = {
    401: "auth_failed",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
}


def rest_code(error: CrdtError | AppError | StorageError) -> str:
    """The REST ``error.code`` of ``error``: the JSON protocol's code for gateway errors, else upper-case."""
    if isinstance(error, AppError):
        return error.wire_code
    return error.code.upper()


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """``{"error": {"code", "message", ...}}``, the body of every REST error."""
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of ``app``'s HTTP routes a JSON error body with the status from ``HTTP_STATUSES``."""
    app.add_exception_handler(AppError, _known_error)
    app.add_exception_handler(CrdtError, _known_error)
    app.add_exception_handler(StorageError, _known_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected_error)


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    if request.scope["type"] != "http":
        raise exc  # WebSocket routes close with their own codes
    if not isinstance(exc, CrdtError | AppError | StorageError):
        return await _unexpected_error(request, exc)
    status = http_status_for(exc.code)
    if status >= 500:
        log.warning("request failed", extra={"path": request.url.path, "reason": exc.code})
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(rest_code(exc), str(exc)), status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if request.scope["type"] != "http":
        raise exc
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    details = [
        {"field": ".".join(str(part) for part in error.get("loc", ())), "message": error.get("msg", "")}
        for error in errors
    ] or [{"field": "request", "message": "invalid request"}]
    first = details[0]
    body = error_body(
        "VALIDATION_FAILED", f"{first['field']}: {first['message']}", field=first["field"], details=details
    )
    return JSONResponse(body, status_code=http_status_for("validation_failed"))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    if status == 400:  # FastAPI could not even decode the body: a validation error of the field "body"
        message = f"body: {exc.detail}" if isinstance(exc, StarletteHTTPException) else "body: undecodable"
        body = error_body(
            "VALIDATION_FAILED", message, field="body", details=[{"field": "body", "message": message}]
        )
        return JSONResponse(body, status_code=http_status_for("validation_failed"))
    code = _HTTP_EXCEPTION_CODES.get(status, "internal_error" if status >= 500 else "invalid_message")
    message = str(exc.detail) if isinstance(exc, StarletteHTTPException) else "error"
    headers = getattr(exc, "headers", None)
    return JSONResponse(error_body(code.upper(), message), status_code=status, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error in request",
        extra={"path": request.url.path, "error": type(exc).__name__},
        exc_info=exc,
    )
    return JSONResponse(error_body("INTERNAL_ERROR", "internal server error"), status_code=500)
