"""Storage errors, and the one place that turns driver failures into them.

Imports only ``sqlalchemy``, never ``app`` or ``crdt``; ``app/errors.py`` maps the codes to HTTP/close codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from sqlalchemy import exc as sa_exc


class StorageError(Exception):
    """Base of every error raised on purpose by ``storage``.

    Attributes:
        code: stable snake_case code; ``app/errors.py`` maps it to an HTTP status or close code.
        retryable: whether the same call may succeed later without any change by the caller.
    """

    code: ClassVar[str] = "storage_error"
    retryable: ClassVar[bool] = False


class StorageUnavailable(StorageError):
    """The database could not be reached or dropped the connection; retry with backoff."""

    code: ClassVar[str] = "storage_unavailable"
    retryable: ClassVar[bool] = True


class NotFound(StorageError):
    """The requested canvas or snapshot does not exist."""

    code: ClassVar[str] = "not_found"
    retryable: ClassVar[bool] = False


# OperationalError covers "connection refused/reset", "database is locked" (SQLite, after busy_timeout)
# and "too many connections"; InterfaceError a closed connection; TimeoutError the pool timeout.
# OSError is what a socket raises before the driver gets to wrap it (e.g. connect refused).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)


@contextmanager
def unavailable_on_driver_error(operation: str) -> Iterator[None]:
    """Re-raise connection-level driver failures inside the block as :class:`StorageUnavailable`.

    Used by the stores around each unit of work. Constraint violations and programming errors pass
    through unchanged: retrying them would not help. ``CancelledError`` is never caught.

    Args:
        operation: what was being done (e.g. ``"load"``), for the error message.

    Raises:
        StorageUnavailable: chained (``from``) to the original driver error.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StorageUnavailable(f"database unreachable during {operation}: {type(exc).__name__}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StorageUnavailable(f"database connection lost during {operation}") from exc
        raise
