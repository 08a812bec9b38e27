"""InMemoryBroker: offsets, epochs, history replay (exact or refused), TTL, ephemeral cursor channels."""

from __future__ import annotations

import pytest

from crdt.broker import HistoryUnavailable, Publication, StreamPosition
from crdt.broker_memory import InMemoryBroker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_offsets_history_and_delivery() -> None:
    broker = InMemoryBroker()
    seen: list[Publication] = []
    start = await broker.subscribe("canvas:1", seen.append)
    assert start.offset == 0
    for i in range(3):
        publication = await broker.publish("canvas:1", b'{"n":%d}' % i, publisher="s1")
        assert publication.offset == i + 1 and publication.epoch == start.epoch
    assert [p.offset for p in seen] == [1, 2, 3] and seen[0].publisher == "s1"
    assert [p.offset for p in await broker.history("canvas:1", StreamPosition(1, start.epoch))] == [2, 3]
    assert await broker.history("canvas:1", StreamPosition(3, start.epoch)) == []
    assert [p.offset for p in await broker.history("canvas:1", StreamPosition(0, start.epoch), limit=2)] == [
        2,
        3,
    ]
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:1", StreamPosition(1, "other-epoch"))
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:1", StreamPosition(4, start.epoch))
    await broker.unsubscribe("canvas:1")
    await broker.publish("canvas:1", b"{}")
    assert len(seen) == 3


async def test_trim_by_size_and_ttl_and_new_epoch_after_loss() -> None:
    clock = Clock()
    broker = InMemoryBroker(history_ttl_s=10, history_max=2, clock=clock)
    epoch = (await broker.position("canvas:1")).epoch
    for _ in range(3):
        await broker.publish("canvas:1", b"{}")
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:1", StreamPosition(0, epoch))  # offset 1 was trimmed
    assert len(await broker.history("canvas:1", StreamPosition(1, epoch))) == 2
    clock.now += 11
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:1", StreamPosition(1, epoch))  # expired
    assert await broker.history("canvas:1", StreamPosition(3, epoch)) == []
    clock.now += 11
    await broker.publish("canvas:2", b"{}")  # sweeps idle channels
    position = await broker.position("canvas:1")
    assert position.epoch != epoch and position.offset == 0


async def test_cursor_channels_keep_no_history() -> None:
    broker = InMemoryBroker()
    position = await broker.position("canvas:1:cursor")
    await broker.publish("canvas:1:cursor", b"{}")
    assert (await broker.position("canvas:1:cursor")).offset == 1
    assert await broker.history("canvas:1:cursor", StreamPosition(1, position.epoch)) == []
    with pytest.raises(HistoryUnavailable):
        await broker.history("canvas:1:cursor", StreamPosition(0, position.epoch))
