"""One connection's seat in a room: who it is, what it may do, and where its frames go.

The peer never awaits a send: it hands frames to a ``FrameSink`` that writes without blocking and
reports when the connection's backlog is over its cap; such a peer is failed with ``SlowConsumer``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .errors import CrdtError, SlowConsumer
from .frame import OutFrame

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Where a peer's outbound frames go; implemented by the transport adapter in ``app``."""

    def write(self, frame: OutFrame) -> bool:
        """Queue ``frame`` for the connection without blocking.

        Returns False when the connection's backlog was already over its cap (the frame may or may
        not have been queued); the caller then fails the peer.
        """
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake (its backlog cannot drain)."""
        ...

    def evict(self, error: CrdtError) -> None:
        """Close a connection that fell behind, with ``error``'s close code, never blocking.

        The close frame goes out after the backlog, so a client that is slow but reading learns
        why and resyncs; one that does not drain its backlog soon is aborted.
        """
        ...


class Peer:
    """A connected client of one room.

    Must be created inside a running event loop.

    Args:
        peer_id: unique per connection.
        user_id: the authenticated user (the JWT ``sub``).
        user_name: display name (the JWT ``name``), used for presence.
        can_write: whether document updates from this peer are applied.
        sink: where frames for this peer go.
    """

    def __init__(
        self, peer_id: str, user_id: str, user_name: str, *, can_write: bool, sink: FrameSink
    ) -> None:
        self.peer_id = peer_id
        self.user_id = user_id
        self.user_name = user_name
        self.can_write = can_write
        self.sink = sink
        self.error: CrdtError | None = None
        self.told_read_only = False
        self._failed: asyncio.Future[CrdtError] = asyncio.get_running_loop().create_future()

    def send(self, frame: OutFrame) -> None:
        """Hand ``frame`` to the sink; never blocks. A backlog over the cap fails the peer."""
        if self.error is None and not self.sink.write(frame):
            self.fail(SlowConsumer("outbound backlog over the cap"))

    def fail(self, error: CrdtError) -> None:
        """End this peer with ``error`` (first error wins). The connection handler closes the socket."""
        if self.error is not None:
            return
        self.error = error
        if isinstance(error, SlowConsumer):
            log.warning("slow consumer evicted", extra={"peer_id": self.peer_id, "user_id": self.user_id})
            self.sink.evict(error)
        self._failed.set_result(error)

    async def wait_failed(self) -> CrdtError:
        """Wait until ``fail`` is called; returns the error."""
        return await asyncio.shield(self._failed)
