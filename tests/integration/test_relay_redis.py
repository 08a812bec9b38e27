"""The document relay over real Redis: two nodes in one process, each with its own ``RedisBroker`` on a
private ``redis-server`` that the test kills and restarts (no persistence: a restart loses everything)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from crdt.broker_redis import RedisBroker
from storage.memory import InMemoryDocumentStore
from tests.redisserver import RedisServer
from tests.relaynodes import Node, cluster, converged, eventually, settle, stored_keys, stored_rows

pytestmark = pytest.mark.integration

BROKER_ARGS = {"op_timeout_s": 0.5, "connect_timeout_s": 0.5, "probe_interval_s": 0.2, "block_s": 0.5}


@asynccontextmanager
async def redis_cluster(
    url: str, prefix: str, store: InMemoryDocumentStore, **relay_args: Any
) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        brokers = {
            name: await stack.enter_async_context(
                RedisBroker(url, node_id=name, prefix=prefix, **BROKER_ARGS)  # type: ignore[arg-type]
            )
            for name in ("n1", "n2")
        }
        broker_for: Callable[[str], Any] = brokers.__getitem__
        nodes = await stack.enter_async_context(
            cluster(
                brokers=broker_for,
                store=store,
                check_interval_s=0.5,
                retry_max_s=0.2,
                coalesce_max=256,
                **relay_args,
            )
        )
        yield nodes


async def test_two_nodes_converge_in_order_over_redis(redis_url: str, redis_prefix: str) -> None:
    store = InMemoryDocumentStore()
    async with redis_cluster(redis_url, redis_prefix, store) as (n1, n2), n1.joined(), n2.joined():
        await eventually(lambda: n2.relay.stats.replies_applied >= 1)
        for i in range(50):
            n1.edit(f"a{i}")
            if i % 2:
                n2.edit(f"b{i}")
            await asyncio.sleep(0.001)
        await eventually(lambda: len(n1.keys()) == 75 and converged(n1, n2))
        await settle(n1, n2)
        assert stored_rows(store) == {"n1": 50, "n2": 25}
        assert await stored_keys(store) == n1.keys()


async def test_redis_killed_under_load_nodes_serve_locally_then_converge(redis_server: RedisServer) -> None:
    store = InMemoryDocumentStore()
    async with redis_cluster(redis_server.url, "relay", store) as (n1, n2), n1.joined(), n2.joined():
        await eventually(lambda: n2.relay.stats.replies_applied >= 1)
        stop = asyncio.Event()
        written = {"n1": 0, "n2": 0}

        async def write(node: Node) -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                node.edit(f"{node.node_id}-{written[node.node_id]}")
                written[node.node_id] += 1
                await asyncio.sleep(0.01)

        async with asyncio.TaskGroup() as group:
            group.create_task(write(n1))
            group.create_task(write(n2))
            await asyncio.sleep(0.5)
            await redis_server.akill()
            await asyncio.sleep(3)
            assert not n1.relay.broker_up and not n2.relay.broker_up
            # both nodes kept serving their own clients
            assert len([k for k in n1.keys() if k.startswith("n1-")]) == written["n1"]
            await redis_server.astart()
            back = time.monotonic()
            await asyncio.sleep(1)
            stop.set()
        total = written["n1"] + written["n2"]
        await eventually(lambda: len(n1.keys()) == total and converged(n1, n2), timeout=10)
        converge_s = time.monotonic() - back
        assert converge_s < 10, converge_s
        assert n1.relay is not n2.relay and n1.relay.stats is not n2.relay.stats
        await settle(n1, n2)
        assert stored_rows(store) == {"n1": written["n1"], "n2": written["n2"]}
        assert await stored_keys(store) == n1.keys()
        # the restart lost the streams: a new epoch, so a full state exchange happened
        assert n1.relay.stats.resets + n2.relay.stats.resets + n1.relay.stats.exchanges >= 1
