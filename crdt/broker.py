"""Channel publication contract: ordered, offset-numbered streams with bounded history.

Implementations: ``broker_memory.py`` (one node, in process) and ``broker_redis.py`` (Redis Streams,
shared by every node). Imports nothing from ``app`` or ``storage``; payloads are opaque bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import CrdtError


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's stream stands: the offset of its last publication and the stream's epoch.

    Attributes:
        offset: offset of the last publication (0 before the first one).
        epoch: names one continuous history of the channel; it changes when history is lost, so an
            offset is only meaningful together with the epoch it was read in.
    """

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One message published on a channel, as every subscriber receives it.

    Attributes:
        channel: the channel name (``canvas:123``, ``canvas:123:cursor``, ...).
        offset: position in the channel's stream: the previous publication's offset plus one.
        epoch: the stream's epoch when it was published.
        payload: the encoded message, opaque to the broker; encoded once by the publisher.
        publisher: who published it (a session or peer id), so that a gateway can skip echoes.
        time: publication time, seconds since the epoch (for history expiry).
    """

    channel: str
    offset: int
    epoch: str
    payload: bytes
    publisher: str | None
    time: float


PublicationHandler = Callable[[Publication], None]
ResetHandler = Callable[[str, StreamPosition], None]
"""Called with a channel and the position delivery continues from, when the node lost publications of
the channel that it can never deliver (the broker's history was lost or trimmed while it was behind)."""


class HistoryUnavailable(CrdtError):
    """The publications after a position can no longer be replayed (trimmed, or the epoch changed)."""

    code = "history_unavailable"


class BrokerUnavailable(CrdtError):
    """The broker's backend cannot be reached (or did not answer in time); nothing was done.

    Raised fast while the backend is known to be down, so callers can keep serving locally.
    """

    code = "broker_unavailable"
    retryable = True


def is_ephemeral(channel: str) -> bool:
    """Whether ``channel`` keeps no history (cursor channels: only the latest state matters)."""
    return channel.endswith(":cursor")


class Broker(Protocol):
    """Channel streams shared by every node: publish, deliver in offset order, replay history.

    Every method may wait (a Redis implementation talks to the network, always under a timeout) and
    raises ``BrokerUnavailable`` when the backend is unreachable. Delivery to a node's handler is
    once per publication, in offset order, without gaps within an epoch, for as long as the node is
    subscribed -- except when the broker loses publications it can never deliver: then the
    subscription's ``on_reset`` is called first, and delivery continues after the position it names.
    """

    async def publish(self, channel: str, payload: bytes, *, publisher: str | None = None) -> Publication:
        """Append ``payload`` to ``channel``'s stream and deliver it to every node subscribed to it.

        Offsets increase by exactly one per publication of a channel. The publication is kept in
        history for the broker's TTL unless the channel ``is_ephemeral``. Publications of one
        channel are delivered to a node's handler in offset order. Returns the publication.
        """
        ...

    async def subscribe(
        self, channel: str, handler: PublicationHandler, *, on_reset: ResetHandler | None = None
    ) -> StreamPosition:
        """Deliver ``channel``'s publications to ``handler`` (this node's fan-out) from now on.

        One handler per channel per node; subscribing again replaces it (and ``on_reset``). Returns
        the position at the moment of subscription: every later publication reaches the handler,
        unless ``on_reset`` is called (see the class docstring). Handlers are called from the event
        loop and must not block.
        """
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` to this node. Unknown channels are ignored."""
        ...

    async def position(self, channel: str) -> StreamPosition:
        """The channel's current position (offset 0 and a fresh epoch for a channel never used)."""
        ...

    async def history(
        self, channel: str, since: StreamPosition, *, limit: int | None = None
    ) -> list[Publication]:
        """The publications after ``since.offset`` in offset order, all of them or none.

        Args:
            channel: the channel.
            since: the last position the caller has seen.
            limit: when given, return at most the ``limit`` most recent publications and do not fail
                on a gap (a "recent history" read rather than an exact replay).

        Raises:
            HistoryUnavailable: ``since.epoch`` is not the current epoch, ``since.offset`` is ahead of
                the stream, or publications after it were trimmed (only without ``limit``).
        """
        ...
