"""The ``Broker`` contract on every implementation: ``InMemoryBroker``, and ``RedisBroker`` on a real Redis.

Then the Redis broker's own promises: delivery across nodes, failing fast while Redis is down, a
reset (never a silent gap) after Redis lost its data, and a reader that reads nothing being rebuilt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from crdt.broker import Broker, BrokerUnavailable, HistoryUnavailable, Publication, StreamPosition
from crdt.broker_memory import InMemoryBroker
from crdt.broker_redis import RedisBroker

pytestmark = pytest.mark.integration

FAST = {"probe_interval_s": 0.2, "probe_deadline_s": 1.0, "validate_interval_s": 0.5, "block_s": 0.5}


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """``await make_broker(**options)``: a broker of the parametrized kind (Redis: all on one prefix)."""
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            shared: dict[str, InMemoryBroker] = {}

            async def make(**options: Any) -> Broker:
                return shared.setdefault("b", InMemoryBroker(**options))

        else:
            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            count = 0

            async def make(**options: Any) -> Broker:
                nonlocal count
                count += 1
                broker = RedisBroker(url, node_id=f"n{count}", prefix=prefix, **FAST, **options)
                return await stack.enter_async_context(broker)

        yield make


async def test_offsets_order_and_history(make_broker) -> None:
    broker = await make_broker()
    seen: list[Publication] = []
    start = await broker.subscribe("canvas:1", seen.append)
    assert start.offset == 0
    published = [await broker.publish("canvas:1", b'{"n":%d}' % i, publisher="s1") for i in range(5)]
    assert [p.offset for p in published] == [1, 2, 3, 4, 5]
    assert {p.epoch for p in published} == {start.epoch}
    await until(lambda: len(seen) == 5)
    assert [(p.offset, p.payload, p.publisher) for p in seen] == [
        (i + 1, b'{"n":%d}' % i, "s1") for i in range(5)
    ]
    history = await broker.history("canvas:1", StreamPosition(2, start.epoch))
    assert [p.offset for p in history] == [3, 4, 5] and history[0].payload == b'{"n":2}'
    assert await broker.history("canvas:1", StreamPosition(5, start.epoch)) == []
    recent = await broker.history("canvas:1", StreamPosition(0, start.epoch), limit=2)
    assert [p.offset for p in recent] == [4, 5]
    assert await broker.history("canvas:1", StreamPosition(0, start.epoch), limit=0) == []
    for bad in (StreamPosition(1, "other"), StreamPosition(6, start.epoch)):
        with pytest.raises(HistoryUnavailable):
            await broker.history("canvas:1", bad)
    assert await broker.position("canvas:1") == StreamPosition(5, start.epoch)


async def test_unsubscribe_stops_delivery_and_resubscribe_replaces(make_broker) -> None:
    broker = await make_broker()
    first: list[Publication] = []
    second: list[Publication] = []
    await broker.subscribe("canvas:2", first.append)
    await broker.publish("canvas:2", b"{}")
    await until(lambda: len(first) == 1)
    await broker.subscribe("canvas:2", second.append)
    await broker.publish("canvas:2", b"{}")
    await until(lambda: len(second) == 1)
    await broker.unsubscribe("canvas:2")
    await broker.unsubscribe("never-subscribed")
    await broker.publish("canvas:2", b"{}")
    await asyncio.sleep(0.2)
    assert len(first) == 1 and len(second) == 1


async def test_trim_by_size_refuses_the_gap(make_broker) -> None:
    broker = await make_broker(history_max=3)
    epoch = (await broker.position("canvas:3")).epoch
    for _ in range(5):
        await broker.publish("canvas:3", b"{}")
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:3", StreamPosition(1, epoch))
    assert [p.offset for p in await broker.history("canvas:3", StreamPosition(2, epoch))] == [3, 4, 5]
    assert len(await broker.history("canvas:3", StreamPosition(0, epoch), limit=10)) == 3


async def test_history_older_than_the_ttl_is_refused(make_broker) -> None:
    broker = await make_broker(history_ttl_s=0.5)
    epoch = (await broker.position("canvas:4")).epoch
    await broker.publish("canvas:4", b"{}")
    assert len(await broker.history("canvas:4", StreamPosition(0, epoch))) == 1
    if isinstance(broker, InMemoryBroker):
        return  # its clock is injected; tests/unit/test_broker_memory.py covers expiry
    await asyncio.sleep(0.7)
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:4", StreamPosition(0, epoch))
    assert await broker.history("canvas:4", StreamPosition(1, epoch)) == []


async def test_cursor_channels_deliver_but_keep_no_history(make_broker) -> None:
    broker = await make_broker()
    seen: list[Publication] = []
    position = await broker.subscribe("canvas:5:cursor", seen.append)
    await broker.publish("canvas:5:cursor", b"{}")
    await until(lambda: len(seen) == 1)
    assert (await broker.position("canvas:5:cursor")).offset == 1
    assert await broker.history("canvas:5:cursor", StreamPosition(1, position.epoch)) == []
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:5:cursor", StreamPosition(0, position.epoch))


async def test_binary_payloads_and_any_channel_name(make_broker) -> None:
    broker = await make_broker()
    seen: list[Publication] = []
    payload = bytes(range(256)) * 4
    await broker.subscribe("yjs:c1:updates", seen.append)
    await broker.publish("yjs:c1:updates", payload, publisher="node-a")
    await until(lambda: len(seen) == 1)
    assert seen[0].payload == payload and seen[0].publisher == "node-a"


# -- Redis only ------------------------------------------------------------------------------------------


async def _redis(url: str, prefix: str, node: str, **options: Any) -> RedisBroker:
    return RedisBroker(url, node_id=node, prefix=prefix, **{**FAST, **options})


@pytest.mark.parametrize("make_broker", ["redis"], indirect=True)
async def test_publications_reach_every_node_in_order(make_broker) -> None:
    a, b, c = await make_broker(), await make_broker(), await make_broker()
    seen_b: list[Publication] = []
    seen_c: list[Publication] = []
    await b.subscribe("canvas:x", seen_b.append)
    await c.subscribe("canvas:x", seen_c.append)

    async def publish_from(broker: Broker, tag: bytes) -> None:
        for i in range(50):
            await broker.publish("canvas:x", tag + b"%d" % i)

    await asyncio.gather(publish_from(a, b"a"), publish_from(b, b"b"))
    await until(lambda: len(seen_b) == 100 and len(seen_c) == 100)
    assert [p.offset for p in seen_b] == list(range(1, 101))
    assert [p.payload for p in seen_b] == [p.payload for p in seen_c]


async def test_redis_down_fails_fast_then_resets_after_data_loss(redis_server, redis_prefix) -> None:
    broker = await _redis(redis_server.url, redis_prefix, "n1", op_timeout_s=0.5, connect_timeout_s=0.5)
    async with broker:
        seen: list[Publication] = []
        resets: list[tuple[str, StreamPosition]] = []
        start = await broker.subscribe("canvas:r", seen.append, on_reset=lambda c, p: resets.append((c, p)))
        await broker.publish("canvas:r", b"1")
        await until(lambda: len(seen) == 1)
        await redis_server.akill()
        began = time.monotonic()
        for _ in range(20):
            with pytest.raises(BrokerUnavailable):
                await broker.publish("canvas:r", b"lost")
        assert time.monotonic() - began < 2.0  # the circuit opened: no waiting per call
        with pytest.raises(BrokerUnavailable):
            await broker.history("canvas:r", start)
        assert await broker.position("canvas:r") == StreamPosition(1, start.epoch)  # local, no I/O
        await redis_server.astart()
        await until(lambda: broker.healthy, timeout=5)
        await until(lambda: bool(resets), timeout=5)
        assert resets[0][0] == "canvas:r" and resets[0][1].epoch != start.epoch
        publication = await broker.publish("canvas:r", b"2")
        assert publication.epoch == resets[0][1].epoch
        await until(lambda: len(seen) == 2)
        assert seen[-1].payload == b"2" and seen[-1].epoch == publication.epoch


async def test_a_reader_that_reads_nothing_is_rebuilt(redis_url, redis_prefix, monkeypatch) -> None:
    async with (
        await _redis(redis_url, redis_prefix, "deaf") as deaf,
        await _redis(redis_url, redis_prefix, "pub") as publisher,
    ):
        seen: list[Publication] = []
        await deaf.subscribe("canvas:d", seen.append)
        real_xread = type(deaf._client).xread
        deafened = {"on": True}

        async def silent_xread(self, streams, count=None, block=None, noack=False):
            if deafened["on"]:
                await asyncio.sleep((block or 0) / 1000)
                return []  # connected and answering, but nothing ever arrives
            return await real_xread(self, streams, count=count, block=block)

        monkeypatch.setattr(type(deaf._client), "xread", silent_xread)
        for i in range(5):
            await publisher.publish("canvas:d", b"%d" % i)
        await until(lambda: deaf.reader_restarts > 0, timeout=5)
        deafened["on"] = False
        await until(lambda: len(seen) == 5, timeout=5)
        assert [p.offset for p in seen] == [1, 2, 3, 4, 5]
