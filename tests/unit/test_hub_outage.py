"""The hub and publisher while the broker is down, and after it lost publications (a reset)."""

from __future__ import annotations

import asyncio

from app.codec import Delivery
from app.hub import Hub, Publisher, Subscription
from crdt.broker import BrokerUnavailable, Publication, PublicationHandler, ResetHandler, StreamPosition
from crdt.broker_memory import InMemoryBroker


class Collect:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.deliveries: list[Delivery] = []

    def send_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    @property
    def offsets(self) -> list[int | None]:
        return [d.offset for d in self.deliveries]


class FlakyBroker(InMemoryBroker):
    """An in-memory broker that can be switched off, and can reset its subscribers."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.resets: dict[str, ResetHandler] = {}

    async def publish(self, channel: str, payload: bytes, *, publisher: str | None = None) -> Publication:
        if self.down:
            raise BrokerUnavailable("down")
        return await super().publish(channel, payload, publisher=publisher)

    async def subscribe(
        self, channel: str, handler: PublicationHandler, *, on_reset: ResetHandler | None = None
    ) -> StreamPosition:
        if on_reset is not None:
            self.resets[channel] = on_reset
        return await super().subscribe(channel, handler)


async def _live(hub: Hub, channel: str, receiver: Collect) -> Subscription:
    subscription = Subscription(channel, receiver)
    subscription.start_at(await hub.add(subscription))
    subscription.go_live([])
    return subscription


async def until(condition, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_announcements_are_served_locally_during_an_outage_and_published_once_after() -> None:
    broker = FlakyBroker()
    hub = Hub(broker)
    early, author = Collect("s1"), Collect("author")
    await _live(hub, "canvas:c", early)
    await _live(hub, "canvas:c", author)
    async with Publisher(broker, hub) as publisher:
        broker.down = True
        futures = [publisher.submit("canvas:c", {"type": "t", "n": i}, "author") for i in range(3)]
        await until(lambda: len(early.deliveries) == 3)
        assert early.offsets == [None, None, None] and author.offsets == []  # no echo, even unnumbered
        for future in futures:  # nobody waits for the outage
            assert isinstance(future.exception(), BrokerUnavailable)
        refused = publisher.submit("canvas:c", {"type": "rest"}, None, retry=False)
        assert isinstance(refused.exception(), BrokerUnavailable)  # REST publishes fail at once
        late = Collect("s2")
        await _live(hub, "canvas:c", late)  # subscribed during the outage: gets the numbered copies later
        broker.down = False
        await until(lambda: not publisher.degraded)  # the held announcements are published, in order
        publisher.submit("canvas:c", {"type": "t", "n": 3}, "author")
        await until(lambda: len(late.deliveries) == 4)
    assert late.offsets == [1, 2, 3, 4]
    assert early.offsets == [None, None, None, 4]  # the numbered copies were not sent twice
    assert [s.offset for s in (await _subs(hub, "canvas:c"))] == [4, 4, 4]


async def _subs(hub: Hub, channel: str) -> list[Subscription]:
    return list(hub._channels[channel].values())


async def test_a_reset_drops_history_channels_and_carries_cursor_channels_on() -> None:
    broker = FlakyBroker()
    lost: list[Subscription] = []
    hub = Hub(broker, on_lost=lost.append)
    canvas, cursor = Collect("a"), Collect("a")
    sub_canvas = await _live(hub, "canvas:c", canvas)
    sub_cursor = await _live(hub, "canvas:c:cursor", cursor)
    for channel in ("canvas:c", "canvas:c:cursor"):
        for _ in range(3):
            await broker.publish(channel, b"{}")
    broker.resets["canvas:c"]("canvas:c", StreamPosition(0, "new"))
    broker.resets["canvas:c:cursor"]("canvas:c:cursor", StreamPosition(0, "new"))
    assert lost == [sub_canvas] and sub_canvas.lost and not sub_cursor.lost
    sub_cursor.deliver(Delivery("canvas:c:cursor", 1, b"{}", "b"))  # offsets start again after a reset
    sub_canvas.deliver(Delivery("canvas:c", 1, b"{}", "b"))
    assert cursor.offsets == [1, 2, 3, 1] and canvas.offsets == [1, 2, 3]
