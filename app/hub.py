"""Node-local fan-out of channel publications to sessions, and the ordered publisher in front of the broker.

The hub subscribes this node to a channel on the broker while at least one local session wants it,
and hands every publication (one ``Delivery``, each format encoded once) to those sessions. No sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType
from typing import Any, Protocol

from crdt.broker import Broker, BrokerUnavailable, Publication, StreamPosition

from .codec import Delivery, dump_json

log = logging.getLogger(__name__)


class Receiver(Protocol):
    """The session side of a subscription."""

    session_id: str

    def send_delivery(self, delivery: Delivery) -> None:
        """Write one publication to the connection; never blocks."""
        ...


class Subscription:
    """One session's subscription to one channel: the last offset it has seen, and catch-up buffering.

    Created buffering: publications that arrive while history is being read are held and sent by
    ``go_live`` after the replay, in offset order and without duplicates. The session's own
    publications are not sent back (the seed's echo rule) but still advance ``offset``.
    """

    __slots__ = ("_buffer", "channel", "epoch", "offset", "receiver")

    def __init__(self, channel: str, receiver: Receiver) -> None:
        self.channel = channel
        self.receiver = receiver
        self.offset = 0
        self.epoch = ""
        self._buffer: list[Delivery] | None = []

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)

    def start_at(self, position: StreamPosition) -> None:
        """Set where delivery starts: publications after ``position`` are sent."""
        self.offset, self.epoch = position.offset, position.epoch

    def deliver(self, delivery: Delivery) -> None:
        """Called by the hub for each publication of the channel (buffered while catching up)."""
        if self._buffer is not None:
            self._buffer.append(delivery)
        else:
            self._send(delivery)

    def go_live(self, replay: list[Delivery]) -> None:
        """Send ``replay`` (history after the start position), then what was buffered, then live."""
        for delivery in replay:
            self._send(delivery)
        buffered, self._buffer = self._buffer or [], None
        for delivery in buffered:
            self._send(delivery)

    def _send(self, delivery: Delivery) -> None:
        if delivery.offset <= self.offset:
            return  # already replayed, or before the start position
        self.offset = delivery.offset
        if delivery.publisher != self.receiver.session_id:
            self.receiver.send_delivery(delivery)


class Hub:
    """This node's subscriptions, by channel; one broker subscription per channel in use.

    Args:
        broker: where channels live.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._channels: dict[str, dict[int, Subscription]] = {}
        self._joining: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()

    async def add(self, subscription: Subscription) -> StreamPosition:
        """Register ``subscription`` (buffering) and return the channel's position at that moment.

        The first local subscriber of a channel subscribes this node at the broker; later ones wait
        for that to finish before reading the position, so none of them starts at a position whose
        publications this node was not yet receiving. If the broker subscription fails, every
        subscriber waiting on it fails too and the channel is left.
        """
        channel = subscription.channel
        local = self._channels.get(channel)
        if local is None:
            local = self._channels[channel] = {}
            local[id(subscription)] = subscription
            joined = self._joining[channel] = asyncio.get_running_loop().create_future()
            try:
                async with self._lock:
                    position = await self._broker.subscribe(channel, self._on_publication)
            except BaseException as exc:
                if self._channels.get(channel) is local:
                    del self._channels[channel]
                joined.set_exception(exc if isinstance(exc, Exception) else BrokerUnavailable("cancelled"))
                joined.exception()  # retrieved: there may be no other waiter
                raise
            finally:
                self._joining.pop(channel, None)
            joined.set_result(None)
            return position
        local[id(subscription)] = subscription
        joining = self._joining.get(channel)
        try:
            if joining is not None:
                await asyncio.shield(joining)
            return await self._broker.position(channel)
        except BaseException:
            local.pop(id(subscription), None)
            raise

    async def remove(self, subscription: Subscription) -> None:
        """Unregister ``subscription``; the node leaves the channel when it was the last one here."""
        channel = subscription.channel
        local = self._channels.get(channel)
        if local is None or local.pop(id(subscription), None) is None:
            return
        if local:
            return
        del self._channels[channel]
        async with self._lock:
            if channel not in self._channels:
                try:
                    await self._broker.unsubscribe(channel)
                except Exception:  # the broker is down: its deliveries find no local subscriber
                    log.warning("broker unsubscribe failed", extra={"channel": channel}, exc_info=True)

    def local_count(self, channel: str) -> int:
        """Distinct sessions of this node subscribed to ``channel``."""
        return len({sub.receiver.session_id for sub in self._channels.get(channel, {}).values()})

    def _on_publication(self, publication: Publication) -> None:
        local = self._channels.get(publication.channel)
        if not local:
            return
        delivery = to_delivery(publication)
        for subscription in list(local.values()):
            try:
                subscription.deliver(delivery)
            except Exception:  # one receiver's failure must not cost the others this publication
                log.exception("delivery failed", extra={"channel": publication.channel})


def to_delivery(publication: Publication) -> Delivery:
    return Delivery(publication.channel, publication.offset, publication.payload, publication.publisher)


class Publisher:
    """Publishes messages to the broker in the order they were submitted, from synchronous code.

    Room observers run inside a transaction and cannot await; they ``submit`` here and a single
    worker task publishes. Use as an async context manager (leaving publishes what is queued).
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._queue: deque[tuple[str, bytes, str | None, asyncio.Future[Publication]]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Publisher:
        self._task = asyncio.create_task(self._run(), name="channel-publisher")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()

    def submit(
        self, channel: str, message: dict[str, Any], publisher: str | None
    ) -> asyncio.Future[Publication]:
        """Queue ``message`` (a server envelope without channel/offset) for ``channel``; never blocks.

        Returns a future of the publication (its offset), resolved once the broker accepted it.
        """
        future: asyncio.Future[Publication] = asyncio.get_running_loop().create_future()
        self._queue.append((channel, dump_json(message), publisher, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            channel, payload, publisher, future = self._queue.popleft()
            try:
                publication = await self._broker.publish(channel, payload, publisher=publisher)
            except Exception as exc:
                log.exception("channel publish failed", extra={"channel": channel})
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved here: nobody may be waiting for it
                continue
            if not future.done():
                future.set_result(publication)
