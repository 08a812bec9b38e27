"""kill -9 during a write load: what was committed survives, and reconnecting clients heal the rest."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import websockets
from pycrdt import Doc, Map, Provider

from crdt.persist import merge_to_state
from storage.db import make_engine, make_sessionmaker
from storage.documents import SqlDocumentStore
from tests.conftest import mint
from tests.yclient import WebsocketChannel, elements, eventually, yjs_client

pytestmark = pytest.mark.e2e


async def _write_until_cut(url: str, doc: Doc, prefix: str, written: dict[str, float]) -> None:
    """Keep writing elements into ``doc`` through a provider until the server goes away."""
    with contextlib.suppress(websockets.ConnectionClosed, OSError, ExceptionGroup):
        async with (
            websockets.connect(url) as connection,
            Provider(doc, WebsocketChannel(connection, "c")) as provider,
        ):
            await provider.synced.wait()
            i = 0
            while True:
                key = f"{prefix}{i}"
                elements(doc)[key] = Map({"x": i, "by": prefix})
                written[key] = time.monotonic()
                i += 1
                await asyncio.sleep(0.003)
                if connection.state is not websockets.State.OPEN:
                    return


async def _stored_keys(database_url: str, canvas_id: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        updates = await SqlDocumentStore(make_sessionmaker(engine)).load(canvas_id)
    finally:
        await engine.dispose()
    doc = Doc()
    doc.apply_update(merge_to_state(updates))
    return set(elements(doc).keys())


async def test_kill_9_loses_nothing_committed_and_clients_heal(server_processes, tmp_path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    server = await server_processes(MAILY_DATABASE_URL=database_url)
    docs = {"a": Doc(), "b": Doc()}
    written: dict[str, float] = {}
    url = f"{server.ws_url}/yjs/crash?token={mint()}"
    writers = [
        asyncio.create_task(_write_until_cut(url, doc, prefix, written)) for prefix, doc in docs.items()
    ]
    await asyncio.sleep(2.0)
    killed_at = time.monotonic()
    await server.kill()
    async with asyncio.timeout(10):
        await asyncio.gather(*writers)
    assert len(written) > 100, "the write load did not run"

    stored = await _stored_keys(database_url, "crash")
    # group commit every 10 ms: anything written well before the kill was committed
    old_enough = {key for key, at in written.items() if at < killed_at - 0.5}
    assert old_enough <= stored, f"{len(old_enough - stored)} committed-long-ago updates missing"
    assert stored <= set(written)

    restarted = await server_processes(port=server.port, MAILY_DATABASE_URL=database_url)
    for prefix, doc in docs.items():  # the same clients reconnect with their local state
        async with yjs_client(restarted.ws_url, "crash", mint(prefix), doc=doc):
            pass
    async with yjs_client(restarted.ws_url, "crash", mint("fresh")) as (fresh, _, _):
        await eventually(lambda: set(elements(fresh).keys()) == set(written))
