"""Node-local fan-out of channel publications to sessions, and the ordered publisher in front of the broker.

The hub subscribes this node to a channel on the broker while at least one local session wants it,
and hands every publication (one ``Delivery``, each format encoded once) to those sessions. No sockets.

While the broker is unavailable the publisher hands this node's own announcements to the hub at once,
unnumbered (``offset: null``), and keeps them to publish when the broker is back; the numbered copy is
then not sent again to the subscriptions that already had it. A broker reset (publications lost for
good) marks the channel's subscriptions lost; the gateway drops them and tells their clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from crdt.broker import Broker, BrokerUnavailable, Publication, StreamPosition, is_ephemeral

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

    __slots__ = ("_buffer", "channel", "epoch", "lost", "offset", "receiver")

    def __init__(self, channel: str, receiver: Receiver) -> None:
        self.channel = channel
        self.receiver = receiver
        self.offset = 0
        self.epoch = ""
        self.lost = False  # the broker lost publications of the channel: nothing more is sent
        self._buffer: list[Delivery] | None = []

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)

    def start_at(self, position: StreamPosition) -> None:
        """Set where delivery starts: publications after ``position`` are sent."""
        self.offset, self.epoch = position.offset, position.epoch

    def deliver(self, delivery: Delivery) -> None:
        """Called by the hub for each publication of the channel (buffered while catching up)."""
        if self.lost:
            return
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

    def deliver_unnumbered(self, delivery: Delivery) -> bool:
        """Send a publication the broker could not number yet; False when not sent (catching up)."""
        if self.lost or self._buffer is not None:
            return False
        if delivery.publisher != self.receiver.session_id:
            self.receiver.send_delivery(delivery)
        return True

    def skip(self, offset: int) -> None:
        """The publication at ``offset`` was sent unnumbered before: only advance past it."""
        if self._buffer is None and offset > self.offset:
            self.offset = offset

    def _send(self, delivery: Delivery) -> None:
        offset = delivery.offset or 0
        if offset <= self.offset:
            return  # already replayed, or before the start position
        self.offset = offset
        if delivery.publisher != self.receiver.session_id:
            self.receiver.send_delivery(delivery)


class Hub:
    """This node's subscriptions, by channel; one broker subscription per channel in use.

    Args:
        broker: where channels live.
        on_lost: called with each subscription whose channel the broker reset (it is marked ``lost``).
    """

    def __init__(self, broker: Broker, on_lost: Callable[[Subscription], None] | None = None) -> None:
        self._broker = broker
        self._on_lost = on_lost
        self._unnumbered: dict[tuple[str, bytes], set[int]] = {}  # sent before the broker numbered them
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
                    position = await self._broker.subscribe(
                        channel, self._on_publication, on_reset=self._on_reset
                    )
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

    def deliver_unnumbered(self, channel: str, payload: bytes, publisher: str | None) -> None:
        """Send this node's own publication to its local subscribers before the broker numbered it."""
        local = self._channels.get(channel)
        if not local:
            return
        delivery = Delivery(channel, None, payload, publisher)
        sent: set[int] = set()
        for key, subscription in list(local.items()):
            try:
                if subscription.deliver_unnumbered(delivery):
                    sent.add(key)
            except Exception:
                log.exception("delivery failed", extra={"channel": channel})
        if sent:
            self._unnumbered[(channel, payload)] = sent

    def forget_unnumbered(self, channel: str, payload: bytes) -> None:
        """The publication will never be numbered (dropped from the publisher's backlog)."""
        self._unnumbered.pop((channel, payload), None)

    def _on_publication(self, publication: Publication) -> None:
        local = self._channels.get(publication.channel)
        if not local:
            return
        delivery = to_delivery(publication)
        already = None
        if self._unnumbered:
            already = self._unnumbered.pop((publication.channel, publication.payload), None)
        for key, subscription in list(local.items()):
            try:
                if already is not None and key in already:
                    subscription.skip(publication.offset)
                else:
                    subscription.deliver(delivery)
            except Exception:  # one receiver's failure must not cost the others this publication
                log.exception("delivery failed", extra={"channel": publication.channel})

    def _on_reset(self, channel: str, position: StreamPosition) -> None:
        local = self._channels.get(channel) or {}
        if is_ephemeral(channel):  # cursors promise no continuity: carry on from the new position
            for subscription in list(local.values()):
                subscription.start_at(position)
            return
        log.warning("channel reset by the broker", extra={"channel": channel, "subscriptions": len(local)})
        for subscription in list(local.values()):
            subscription.lost = True
            if self._on_lost is not None:
                self._on_lost(subscription)


def to_delivery(publication: Publication) -> Delivery:
    return Delivery(publication.channel, publication.offset, publication.payload, publication.publisher)


@dataclass(slots=True)
class _Item:
    channel: str
    payload: bytes
    publisher: str | None
    future: asyncio.Future[Publication]
    retry: bool
    sent_locally: bool = False


class Publisher:
    """Publishes messages to the broker in the order they were submitted, from synchronous code.

    Room observers run inside a transaction and cannot await; they ``submit`` here and a single
    worker task publishes. Use as an async context manager (leaving publishes what is queued).

    While the broker raises ``BrokerUnavailable``, messages submitted with ``retry`` (announcements
    of changes that already happened: ``canvas_updated``, ``presence``, cursors) are sent to this
    node's subscribers at once, unnumbered, and kept (at most ``backlog_max``, oldest dropped first)
    to be published in order when the broker answers again; their futures fail at once, so nobody
    waits for the outage. Messages without ``retry`` (REST and server publishes) fail and are dropped:
    their caller reports the failure.

    Args:
        broker: where publications go.
        hub: this node's fan-out, for unnumbered local delivery (None: no local delivery).
        backlog_max: most ``retry`` messages kept while the broker is unavailable.
    """

    def __init__(self, broker: Broker, hub: Hub | None = None, *, backlog_max: int = 10_000) -> None:
        self._broker = broker
        self._hub = hub
        self._backlog_max = backlog_max
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._degraded = False
        self.dropped = 0  # announcements dropped from a full backlog (never published)

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

    @property
    def degraded(self) -> bool:
        """True while the broker is unavailable (announcements are held back)."""
        return self._degraded

    def submit(
        self, channel: str, message: dict[str, Any], publisher: str | None, *, retry: bool = True
    ) -> asyncio.Future[Publication]:
        """Queue ``message`` (a server envelope without channel/offset) for ``channel``; never blocks.

        Returns a future of the publication (its offset), resolved once the broker accepted it, or
        failed with ``BrokerUnavailable`` (see the class docstring for what ``retry`` changes).
        """
        future: asyncio.Future[Publication] = asyncio.get_running_loop().create_future()
        item = _Item(channel, dump_json(message), publisher, future, retry)
        if not retry and self._degraded:
            _fail(future, BrokerUnavailable("the broker is unavailable"))
            return future
        if retry and self._degraded:
            self._send_locally(item)
            if len(self._queue) >= self._backlog_max:
                self._drop_oldest()
        self._queue.append(item)
        self._wakeup.set()
        return future

    def _send_locally(self, item: _Item) -> None:
        if not item.sent_locally and self._hub is not None:
            item.sent_locally = True
            self._hub.deliver_unnumbered(item.channel, item.payload, item.publisher)
        _fail(item.future, BrokerUnavailable("the broker is unavailable; will publish when it is back"))

    def _drop_oldest(self) -> None:
        for index, item in enumerate(self._queue):
            if item.retry:
                del self._queue[index]
                self.dropped += 1
                if self._hub is not None:
                    self._hub.forget_unnumbered(item.channel, item.payload)
                if self.dropped % 1000 == 1:
                    log.error("publish backlog full, dropping announcements", extra={"dropped": self.dropped})
                return

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._queue[0]
            try:
                publication = await self._broker.publish(item.channel, item.payload, publisher=item.publisher)
            except BrokerUnavailable as exc:
                if not self._degraded:
                    log.error("broker unavailable: announcing locally, publishing later")
                    self._degraded = True
                if not item.retry:
                    self._queue.popleft()
                    _fail(item.future, exc)
                    continue
                for waiting in list(self._queue):
                    if waiting.retry:
                        self._send_locally(waiting)
                    else:  # nobody waits behind the outage for a publish that is not retried
                        self._queue.remove(waiting)
                        _fail(waiting.future, exc)
                if self._closing:
                    log.error(
                        "broker unavailable at shutdown: announcements dropped",
                        extra={"count": len(self._queue)},
                    )
                    return
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(backoff):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 1.0)
                continue
            except Exception as exc:
                log.exception("channel publish failed", extra={"channel": item.channel})
                self._queue.popleft()
                _fail(item.future, exc)
                continue
            self._queue.popleft()
            backoff = 0.05
            if self._degraded:
                self._degraded = False
                log.info(
                    "broker available again: publishing held announcements", extra={"count": len(self._queue)}
                )
            if not item.future.done():
                item.future.set_result(publication)


def _fail(future: asyncio.Future[Publication], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved here: nobody may be waiting for it
