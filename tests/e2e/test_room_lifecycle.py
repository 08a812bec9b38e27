"""Clients joining while a room loads or unloads always get the complete document (Hocuspocus #821/#995)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from pycrdt import Map

from tests.conftest import mint
from tests.yclient import elements, yjs_client

pytestmark = pytest.mark.e2e


async def _sees_all(server, canvas: str, expected: int) -> int:
    async with yjs_client(server.ws_url, canvas, mint("joiner")) as (doc, _, _):
        return len(elements(doc))


async def test_joins_during_load_and_unload_never_see_an_empty_document(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, unload_grace_s=0.05)
    async with yjs_client(server.ws_url, "life", mint()) as (doc, _, _):
        for i in range(200):
            elements(doc)[f"e{i}"] = Map({"x": i})
    rng = random.Random(7)
    for _ in range(25):
        # stagger joins around the moment the room finishes its grace period and unloads
        await asyncio.sleep(rng.uniform(0.0, 0.12))
        counts = await asyncio.gather(*(_sees_all(server, "life", 200) for _ in range(4)))
        assert counts == [200] * 4


async def test_concurrent_first_joins_share_one_load(server) -> None:
    async with yjs_client(server.ws_url, "share", mint()) as (doc, _, _):
        elements(doc)["only"] = Map({"x": 1})
    await asyncio.sleep(0.5)  # unloaded
    assert server.node.rooms.get("share") is None
    counts = await asyncio.gather(*(_sees_all(server, "share", 1) for _ in range(20)))
    assert counts == [1] * 20


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_normal_disconnects_log_no_traceback(server) -> None:
    captured = _Records()
    logging.getLogger().addHandler(captured)
    try:
        for _ in range(5):
            async with yjs_client(server.ws_url, "quiet", mint()) as (doc, _, _):
                elements(doc)["k"] = Map({"x": 1})
        await asyncio.sleep(0.4)
    finally:
        logging.getLogger().removeHandler(captured)
    assert any(r.getMessage() == "yjs peer closed" for r in captured.records)
    noisy = [r.getMessage() for r in captured.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == []
