"""Errors of the document layer, each with a stable code; ``app/errors.py`` maps codes to close codes."""

from __future__ import annotations

from typing import ClassVar


class CrdtError(Exception):
    """Base of every error raised by ``crdt``.

    Attributes:
        code: stable snake_case identifier, mapped to close codes and HTTP statuses only in ``app``.
        retryable: whether a client should reconnect (with backoff) after this error.
    """

    code: ClassVar[str] = "crdt_error"
    retryable: ClassVar[bool] = False


class BadMessage(CrdtError):
    """A frame that does not decode as the y-websocket protocol, or an update that does not decode."""

    code = "bad_message"


class FrameTooLarge(CrdtError):
    """A frame over the configured size limit."""

    code = "frame_too_large"


class SlowConsumer(CrdtError):
    """The peer did not read fast enough: its outbound backlog went over the cap."""

    code = "slow_consumer"
    retryable = True


class RoomUnavailable(CrdtError):
    """The room could not be loaded from storage (the store is down or too slow)."""

    code = "room_unavailable"
    retryable = True


class RoomFull(CrdtError):
    """The room already serves the maximum number of peers."""

    code = "room_full"
    retryable = True


class RoomClosed(CrdtError):
    """The canvas was deleted while the peer was connected."""

    code = "room_closed"


class ServerShutdown(CrdtError):
    """This node is shutting down; the client should reconnect (to another node)."""

    code = "server_shutdown"
    retryable = True


class PeerLeft(CrdtError):
    """The client went away; not an error to report, only a reason to stop serving it."""

    code = "peer_left"


class EditRefused(CrdtError):
    """A canvas edit that cannot be applied as asked (bad fields, unknown or existing item)."""

    code = "edit_refused"


class ElementLocked(CrdtError):
    """The element (or its layer) is locked by another user."""

    code = "element_locked"
