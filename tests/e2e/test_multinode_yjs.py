"""Several real nodes (``maily-realtime serve`` subprocesses) on one private Redis and one PostgreSQL
database: documents converge across nodes, JSON subscribers see other nodes' edits, and a Redis outage
under cross-node load loses nothing.

Redis is a ``redis-server`` of the test's own (no persistence), killed and restarted by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from pycrdt import Doc, Map
from sqlalchemy import text

from crdt import protocol
from crdt.persist import merge_to_state
from storage.db import make_engine, make_sessionmaker
from storage.documents import SqlDocumentStore
from storage.migrate import upgrade
from tests.conftest import ServerProcess, mint
from tests.jsonclient import json_client
from tests.redisserver import RedisServer
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

NODE_ENV = {
    "MAILY_AUTO_MIGRATE": "false",
    "MAILY_UNLOAD_GRACE_S": "2",
    "MAILY_LOG_JSON": "false",
}


@pytest.fixture
async def pg_url(pg_database_url: str) -> str:
    """The session's PostgreSQL database, migrated and emptied: the nodes' shared store."""
    async with asyncio.timeout(60):
        await asyncio.to_thread(upgrade, pg_database_url)
    engine = make_engine(pg_database_url)
    try:
        async with asyncio.timeout(10), engine.begin() as conn:
            await conn.execute(text("TRUNCATE documents, document_updates, snapshots RESTART IDENTITY"))
    finally:
        await engine.dispose()
    return pg_database_url


@pytest.fixture
async def nodes(
    server_processes: Callable[..., Any], redis_server: RedisServer, pg_url: str
) -> Callable[[int], Any]:
    """``await nodes(n)``: ``n`` nodes ``n1..`` sharing ``redis_server`` and ``pg_url``."""

    async def start(count: int) -> list[ServerProcess]:
        return list(
            await asyncio.gather(
                *(
                    server_processes(
                        MAILY_NODE_ID=f"n{i + 1}",
                        MAILY_DATABASE_URL=pg_url,
                        MAILY_REDIS_URL=redis_server.url,
                        **NODE_ENV,
                    )
                    for i in range(count)
                )
            )
        )

    return start


async def stored(pg_url: str, canvas_id: str) -> tuple[set[str], Counter[tuple[str, str]]]:
    """The element keys of the stored document, and how many log rows touched each (element, node)."""
    engine = make_engine(pg_url)
    try:
        updates = await SqlDocumentStore(make_sessionmaker(engine)).load(canvas_id)
        async with asyncio.timeout(10), engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT node_id, elements FROM document_updates WHERE canvas_id = :c"),
                    {"c": canvas_id},
                )
            ).all()
    finally:
        await engine.dispose()
    doc = Doc()
    if updates:
        doc.apply_update(merge_to_state(updates))
    touched = Counter((element, row.node_id) for row in rows for element in json.loads(row.elements))
    return set(elements(doc).keys()), touched


class Writer:
    """A pycrdt editor that adds ``<prefix><i>`` elements at a steady pace until stopped."""

    def __init__(self, base_url: str, canvas_id: str, prefix: str, *, period_s: float = 0.02) -> None:
        self.base_url, self.canvas_id, self.prefix, self.period_s = base_url, canvas_id, prefix, period_s
        self.written: list[str] = []
        self.doc = Doc()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with yjs_client(self.base_url, self.canvas_id, mint(self.prefix), self.doc):
            deadline = time.monotonic() + 120  # bounded, whatever happens
            while not self._stop.is_set() and time.monotonic() < deadline:
                key = f"{self.prefix}{len(self.written)}"
                elements(self.doc)[key] = Map({"x": len(self.written), "by": self.prefix})
                self.written.append(key)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.period_s):
                        await self._stop.wait()
            await asyncio.sleep(0.2)  # let the provider send the last update

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def running(*writers: Writer) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as group:
        for writer in writers:
            group.create_task(writer.run())
        try:
            yield
        finally:
            for writer in writers:
                writer.stop()


async def test_editors_on_three_nodes_converge(nodes, pg_url: str) -> None:
    n1, n2, n3 = await nodes(3)
    docs = [Doc(), Doc(), Doc()]
    async with contextlib.AsyncExitStack() as stack:
        for node, doc, user in zip((n1, n2, n3), docs, ("ann", "bob", "cid"), strict=True):
            await stack.enter_async_context(yjs_client(node.ws_url, "m1", mint(user), doc))
        for i in range(20):
            for doc, user in zip(docs, ("ann", "bob", "cid"), strict=True):
                elements(doc)[f"{user}{i}"] = Map({"x": i})
            await asyncio.sleep(0.005)
        expected = {f"{user}{i}" for user in ("ann", "bob", "cid") for i in range(20)}
        await eventually(lambda: all(set(elements(doc).keys()) == expected for doc in docs), timeout=10)
        # concurrent edits of one element settle on one value everywhere
        elements(docs[0])["shared"] = Map({"x": "ann"})
        await eventually(lambda: all("shared" in elements(doc) for doc in docs), timeout=10)
        for doc, user in zip(docs, ("ann", "bob", "cid"), strict=True):
            elements(doc)["shared"]["x"] = user
        await eventually(lambda: len({str(elements(doc)["shared"].to_py()) for doc in docs}) == 1, timeout=10)
    # stored once each, by the node its editor is connected to
    await eventually_async(
        lambda: _stored_once(pg_url, "m1", expected, {"ann": "n1", "bob": "n2", "cid": "n3"})
    )


async def _stored_once(pg_url: str, canvas_id: str, expected: set[str], node_of: dict[str, str]) -> bool:
    keys, touched = await stored(pg_url, canvas_id)
    if not expected <= keys:
        return False
    for key in expected:
        node = node_of[key.rstrip("0123456789")]
        assert touched[(key, node)] == 1, (key, touched[(key, node)])
        assert sum(count for (element, _), count in touched.items() if element == key) == 1, key
    return True


async def eventually_async(check: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def test_json_subscriber_on_one_node_sees_yjs_edits_made_on_another(nodes) -> None:
    n1, n2 = await nodes(2)
    async with json_client(n2.ws_url, mint("jane")) as jane:
        await jane.subscribe("canvas:m2")
        async with yjs_client(n1.ws_url, "m2", mint("yuri")) as (doc, _, _):
            elements(doc)["y1"] = Map({"type": "rect", "x": 5, "y": 6})
            added = await jane.expect(
                "canvas_updated", lambda m: m["data"].get("elementId") == "y1", timeout=10
            )
            assert added["data"]["action"] == "add" and added["data"]["user"]["id"] == "yuri"
            elements(doc)["y1"]["x"] = 50
            moved = await jane.expect(
                "canvas_updated", lambda m: m["data"].get("elementId") == "y1", timeout=10
            )
            assert moved["data"]["position"] == {"x": 50, "y": 6}
            # and the JSON client's own edit on n2 reaches the Yjs editor on n1
            add = {"canvasId": "m2", "action": "add", "elementId": "j1", "properties": {"type": "text"}}
            assert (await jane.request("canvas_update", add, "ack"))["type"] == "ack"
            await eventually(lambda: "j1" in elements(doc), timeout=10)


async def test_deleting_a_canvas_on_one_node_closes_it_on_the_others(nodes, pg_url: str) -> None:
    n1, n2 = await nodes(2)
    async with yjs_client(n2.ws_url, "m4", mint("bob")) as (doc, _, connection):
        elements(doc)["e1"] = Map({"x": 1})
        await eventually_async(lambda: _has_stored(pg_url, "m4"))
        admin = {"Authorization": f"Bearer {mint('admin', {'canvas:*': 'admin'})}"}
        async with httpx.AsyncClient(base_url=n1.http_url, timeout=10) as http:
            assert (await http.delete("/api/v1/canvases/m4", headers=admin)).status_code == 204
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await connection.wait_closed()
                await connection.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    keys, _ = await stored(pg_url, "m4")
    assert keys == set()


async def _has_stored(pg_url: str, canvas_id: str) -> bool:
    keys, _ = await stored(pg_url, canvas_id)
    return bool(keys)


async def test_redis_outage_under_cross_node_load(nodes, redis_server: RedisServer, pg_url: str) -> None:
    """Writers on both nodes; Redis is killed for 10 s: both nodes keep serving their local clients,
    and within 10 s of Redis coming back every client has every update, and storage has each once."""
    n1, n2 = await nodes(2)
    canvas = "m3"
    a, b = Writer(n1.ws_url, canvas, "a"), Writer(n2.ws_url, canvas, "b")
    reader1, reader2 = Doc(), Doc()
    async with (
        yjs_client(n1.ws_url, canvas, mint("r1"), reader1),
        yjs_client(n2.ws_url, canvas, mint("r2"), reader2),
    ):
        async with running(a, b):
            await eventually(lambda: len(a.written) > 20 and len(b.written) > 20)
            await eventually(
                lambda: {"a5", "b5"} <= set(elements(reader1).keys()) & set(elements(reader2).keys())
            )

            await redis_server.akill()
            killed_at = time.monotonic()
            local_a, local_b = len(a.written), len(b.written)
            while time.monotonic() - killed_at < 10:
                await asyncio.sleep(0.5)
            # both nodes kept serving: each node's reader got its local writer's updates during the outage
            during_a = {f"a{i}" for i in range(local_a, len(a.written) - 5)}
            during_b = {f"b{i}" for i in range(local_b, len(b.written) - 5)}
            assert len(during_a) > 100 and len(during_b) > 100
            assert during_a <= set(elements(reader1).keys())
            assert during_b <= set(elements(reader2).keys())
            assert n1.process.returncode is None and n2.process.returncode is None

            await redis_server.astart()
            back_at = time.monotonic()
            await asyncio.sleep(2)  # still writing after Redis is back
        expected = set(a.written) | set(b.written)
        docs = (reader1, reader2, a.doc, b.doc)
        await eventually(lambda: all(expected <= set(elements(doc).keys()) for doc in docs), timeout=30)
        converged_s = time.monotonic() - back_at
        log.info(
            "outage test: %d + %d updates, converged %.2f s after redis came back",
            len(a.written),
            len(b.written),
            converged_s,
        )
        assert converged_s < 10, f"converged {converged_s:.1f} s after Redis came back"
    node_of = {"a": "n1", "b": "n2"}
    await eventually_async(lambda: _stored_once(pg_url, canvas, expected, node_of), timeout=15)


async def test_yjs_cursors_cross_nodes_and_leave_with_their_editor(nodes) -> None:
    """Awareness of a Yjs editor on node 1 reaches an editor on node 2, and its removal too."""
    n1, n2 = await nodes(2)
    cursor = protocol.AwarenessEntry(4242, 3, '{"user":{"name":"Ann"},"cursor":{"x":10,"y":20}}')
    async with yjs_client(n2.ws_url, "aw1", mint("bob")) as (_, watcher, _):
        async with websockets.connect(f"{n1.ws_url}/yjs/aw1?token={mint('ann')}") as ann:
            await ann.recv()  # sync step 1: the room is loaded on node 1
            await asyncio.sleep(0.5)  # both nodes follow the canvas's awareness channel
            await ann.send(protocol.encode_awareness([cursor]))
            await eventually(lambda: protocol.encode_awareness([cursor]) in watcher.received, timeout=10)
        removal = protocol.encode_awareness([protocol.AwarenessEntry(4242, 4, "null")])
        await eventually(lambda: removal in watcher.received, timeout=10)
