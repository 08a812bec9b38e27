"""The node-local channel hub over a broker that is slow or failing, as a remote one can be."""

from __future__ import annotations

import asyncio

import pytest

from app.codec import Delivery
from app.hub import Hub, Subscription
from crdt.broker import BrokerUnavailable
from crdt.broker_memory import InMemoryBroker


class Collect:
    def __init__(self, session_id: str, *, fail: bool = False) -> None:
        self.session_id = session_id
        self.offsets: list[int] = []
        self.fail = fail

    def send_delivery(self, delivery: Delivery) -> None:
        if self.fail:
            raise RuntimeError("this receiver is broken")
        self.offsets.append(delivery.offset)


class SlowBroker(InMemoryBroker):
    """Subscribing takes a network round trip, and can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_subscribe = False

    async def subscribe(self, channel, handler, *, on_reset=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.1)
        if self.fail_subscribe:
            raise BrokerUnavailable("broker down")
        return await super().subscribe(channel, handler)

    async def unsubscribe(self, channel: str) -> None:
        raise BrokerUnavailable("broker down")


async def _start(hub: Hub, subscription: Subscription) -> int:
    position = await hub.add(subscription)
    subscription.start_at(position)
    subscription.go_live([])
    return position.offset


async def test_second_subscriber_does_not_start_before_the_node_receives_the_channel() -> None:
    broker = SlowBroker()
    hub = Hub(broker)
    a, b = Collect("a"), Collect("b")
    first = asyncio.create_task(_start(hub, Subscription("ai_mesh:m", a)))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(_start(hub, Subscription("ai_mesh:m", b)))
    await asyncio.sleep(0.01)
    await broker.publish("ai_mesh:m", b"1")  # while the node's broker subscription is in flight
    start_a, start_b = await asyncio.gather(first, second)
    await broker.publish("ai_mesh:m", b"2")
    # publication 1 reached no one on this node: both must start after it, or they have a silent gap
    assert (start_a, start_b) == (1, 1)
    assert a.offsets == b.offsets == [2]


async def test_failed_broker_subscription_fails_every_waiter_and_leaves_the_channel() -> None:
    broker = SlowBroker()
    broker.fail_subscribe = True
    hub = Hub(broker)
    first = asyncio.create_task(hub.add(Subscription("ai_mesh:q", Collect("a"))))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(hub.add(Subscription("ai_mesh:q", Collect("b"))))
    for task in (first, second):
        with pytest.raises(BrokerUnavailable):
            await task
    assert hub.local_count("ai_mesh:q") == 0
    broker.fail_subscribe = False
    c = Collect("c")
    await _start(hub, Subscription("ai_mesh:q", c))  # the next subscriber really subscribes the node
    await broker.publish("ai_mesh:q", b"x")
    assert c.offsets == [1]


async def test_a_failing_receiver_does_not_cost_others_the_publication() -> None:
    hub = Hub(InMemoryBroker())
    broken, healthy = Collect("broken", fail=True), Collect("healthy")
    await _start(hub, Subscription("ai_mesh:f", broken))
    await _start(hub, Subscription("ai_mesh:f", healthy))
    await hub._broker.publish("ai_mesh:f", b"x")
    assert healthy.offsets == [1]


async def test_remove_survives_a_broker_that_cannot_unsubscribe() -> None:
    broker = SlowBroker()
    hub = Hub(broker)
    subscription = Subscription("ai_mesh:r", Collect("a"))
    await _start(hub, subscription)
    await hub.remove(subscription)  # logs, does not raise
    assert hub.local_count("ai_mesh:r") == 0


@pytest.mark.parametrize(
    "data",
    [{"n": 1}, {"canvasId": "x", "user": "not-an-object", "position": {"x": 1, "y": 2}}, ["a", "list"]],
)
def test_an_unusual_cursor_moved_falls_back_to_the_msgpack_envelope(data: object) -> None:
    """A server-side publisher may send any data as cursor_moved; compacting it must not raise."""
    from app.codec import Format, dump_json

    delivery = Delivery("canvas:x:cursor", 1, dump_json({"type": "cursor_moved", "data": data}), None)
    frame = delivery.frame(Format.MSGPACK, compact_cursors=True)
    assert not frame.text and frame.payload[:1] != b"\x11"
