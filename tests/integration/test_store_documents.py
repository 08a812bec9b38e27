"""SqlDocumentStore on real SQLite and PostgreSQL: the shared contract, races between nodes, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from crdt.store import LogEntry
from storage.db import make_engine, make_sessionmaker, ping
from storage.documents import SqlDocumentStore
from storage.errors import StorageUnavailable
from storage.models import Base, DocumentUpdate
from tests.store_contract import CHECKS, Check, assert_conforms, entry, merge, shape_update, shapes_of

if TYPE_CHECKING:
    from crdt.store import DocumentStore

    def _conforms(store: SqlDocumentStore) -> DocumentStore:
        return store


pytestmark = pytest.mark.integration


def test_conforms_to_document_store_protocol() -> None:
    assert_conforms(SqlDocumentStore)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
async def test_contract(store: SqlDocumentStore, check: Check) -> None:
    async with asyncio.timeout(30):
        await check(store)


async def test_ping(engine: AsyncEngine) -> None:
    async with asyncio.timeout(10):
        await ping(engine)


async def test_sqlite_connections_are_configured(engine: AsyncEngine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas only")
    async with asyncio.timeout(10), engine.connect() as conn:
        values = [
            (await conn.execute(text(f"PRAGMA {name}"))).scalar_one()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        ]
    assert values == ["wal", 1, 1, 5000]  # synchronous 1 = NORMAL


async def test_append_is_all_or_nothing_on_database_error(store: SqlDocumentStore) -> None:
    bad = LogEntry(canvas_id="b", update=b"\x00", user_id=None, node_id=None, elements=())  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        with pytest.raises(sa_exc.IntegrityError):
            await store.append([entry("a", "x"), bad])
        assert await store.load("a") == []
        assert not await store.document_exists("a")
        assert not await store.document_exists("b")


async def test_concurrent_compactions_and_appends_lose_nothing(
    database_url: str, store: SqlDocumentStore
) -> None:
    """Two nodes compact the same canvas in a loop while a third task appends and a fourth loads.

    Node B runs in its own thread and event loop, so its (deliberately slow) merge overlaps everything else.
    Every update must be merged exactly once, and a load never misses an update committed before it began.
    """
    canvas = "race"
    keys = [f"k{i:03d}" for i in range(150)]
    updates = {key: shape_update(key) for key in keys}
    committed: list[str] = []
    appends_done = asyncio.Event()
    stop_b = threading.Event()

    def slow_merge(parts: Sequence[bytes]) -> bytes:
        time.sleep(0.002)  # holds node B's lock a while; blocks only node B's own loop
        return merge(parts)

    async def node_b() -> list[int]:
        engine = make_engine(database_url)
        node = SqlDocumentStore(make_sessionmaker(engine))
        merged: list[int] = []
        try:
            while not stop_b.is_set():
                merged.append(await node.compact(canvas, slow_merge))
                await asyncio.sleep(0.001)
        finally:
            await engine.dispose()
        return merged

    engine_a = make_engine(database_url)
    node_a = SqlDocumentStore(make_sessionmaker(engine_a))
    merged_a: list[int] = []

    async def appender() -> None:
        position = 0
        while position < len(keys):
            batch = keys[position : position + 1 + position % 3]
            await store.append([LogEntry(canvas, updates[k], "user-1", "node-c", (k,)) for k in batch])
            committed.extend(batch)
            position += len(batch)
            await asyncio.sleep(0)
        appends_done.set()

    async def compactor_a() -> None:
        while not appends_done.is_set():
            merged_a.append(await node_a.compact(canvas, merge))
            await asyncio.sleep(0)

    async def loader() -> None:
        while not appends_done.is_set():
            before = set(committed)
            seen = set(shapes_of(await node_a.load(canvas)))
            assert before <= seen, f"load missed committed updates {sorted(before - seen)}"
            await asyncio.sleep(0)

    try:
        async with asyncio.timeout(120):
            b_task = asyncio.ensure_future(asyncio.to_thread(asyncio.run, node_b()))
            async with asyncio.TaskGroup() as group:
                group.create_task(appender())
                group.create_task(compactor_a())
                group.create_task(loader())
            stop_b.set()
            merged_b = await b_task
            final = await store.compact(canvas, merge)
            parts = await store.load(canvas)
            activity = await store.activity(canvas, limit=1000, before_id=None)
            tail = await store.tail_length(canvas)
            (info,) = await store.list_documents(limit=10, offset=0)
    finally:
        stop_b.set()
        await engine_a.dispose()

    assert sum(merged_a) + sum(merged_b) + final == len(keys)  # each update merged exactly once
    assert set(shapes_of(parts)) == set(keys)
    assert len(parts) == 1 and tail == 0
    assert len(activity) == len(keys)
    assert info.version == sum(1 for n in [*merged_a, *merged_b, final] if n)


async def test_update_committing_late_with_smaller_id_is_not_lost(
    database_url: str, engine: AsyncEngine, store: SqlDocumentStore
) -> None:
    """PostgreSQL hands out ids at INSERT but rows appear at COMMIT: a smaller id can become visible later.

    A slow writer (own thread, loop and engine) inserts a row, then commits it while compact() is inside
    merge(), i.e. after compact() read the log and before it marks rows merged. That row has a smaller id
    than rows compact() merged; it must stay in the log, not be marked merged.
    """
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: no transaction can commit while another one is open")
    inserted, commit_now, committed = threading.Event(), threading.Event(), threading.Event()

    async def slow_writer() -> None:
        slow_engine = make_engine(database_url)
        try:
            async with slow_engine.connect() as conn:
                await conn.begin()
                await conn.execute(
                    insert(DocumentUpdate).values(
                        canvas_id="late",
                        data=shape_update("slow"),
                        node_id="node-slow",
                        elements='["slow"]',
                        created_at=datetime.now(UTC),
                    )
                )
                inserted.set()
                await asyncio.to_thread(commit_now.wait, 30)
                await conn.commit()
        finally:
            committed.set()
            await slow_engine.dispose()

    def merge_while_slow_commits(parts: Sequence[bytes]) -> bytes:
        commit_now.set()
        committed.wait(30)  # blocks this loop only; the slow writer commits in its own
        return merge(parts)

    async with asyncio.timeout(60):
        await store.append([entry("late", "first")])
        writer = asyncio.ensure_future(asyncio.to_thread(asyncio.run, slow_writer()))
        try:
            assert await asyncio.to_thread(inserted.wait, 30)
            await store.append([entry("late", "after")])  # a larger id, committed first
            assert await store.compact("late", merge_while_slow_commits) == 2
        finally:
            commit_now.set()
            await writer
        assert await store.tail_length("late") == 1
        assert set(shapes_of(await store.load("late"))) == {"first", "slow", "after"}
        assert await store.compact("late", merge) == 1
        assert set(shapes_of(await store.load("late"))) == {"first", "slow", "after"}


async def test_append_does_not_wait_for_a_running_compaction(
    engine: AsyncEngine, store: SqlDocumentStore
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: appends do wait for a compaction there")
    documents = Base.metadata.tables["documents"]
    async with asyncio.timeout(30):
        await store.append([entry("busy", "a")])
        async with engine.connect() as compactor:
            await compactor.begin()
            # what compact() holds while merge() runs
            await compactor.execute(
                update(documents)
                .where(documents.c.canvas_id == "busy")
                .values(version=documents.c.version + 1)
            )
            async with asyncio.timeout(3):
                await store.append([entry("busy", "b")])
            await compactor.rollback()
        assert set(shapes_of(await store.load("busy"))) == {"a", "b"}


async def test_unreachable_postgresql_raises_storage_unavailable() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    store = SqlDocumentStore(make_sessionmaker(engine))
    try:
        async with asyncio.timeout(30):
            with pytest.raises(StorageUnavailable) as caught:
                await store.load("c")
            assert caught.value.retryable and caught.value.code == "storage_unavailable"
            assert caught.value.__cause__ is not None
            with pytest.raises(StorageUnavailable):
                await store.append([entry("c", "x")])
            with pytest.raises(StorageUnavailable):
                await ping(engine, timeout_s=5)
    finally:
        await engine.dispose()


async def test_unopenable_sqlite_raises_storage_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/maily.db")
    store = SqlDocumentStore(make_sessionmaker(engine))
    try:
        async with asyncio.timeout(30):
            with pytest.raises(StorageUnavailable):
                await store.tail_length("c")
            with pytest.raises(StorageUnavailable):
                await ping(engine)
    finally:
        await engine.dispose()


async def test_in_memory_sqlite_shares_one_database() -> None:
    engine = make_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with asyncio.timeout(30):
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            store = SqlDocumentStore(make_sessionmaker(engine))
            await store.append([entry("m", "a")])
            await store.compact("m", merge)
            assert set(shapes_of(await store.load("m"))) == {"a"}
    finally:
        await engine.dispose()


async def test_append_after_another_node_deleted_the_canvas(engine: AsyncEngine) -> None:
    """Node A remembers that canvas x exists; node B deletes it; A's next append creates it again."""
    node_a = SqlDocumentStore(make_sessionmaker(engine))
    node_b = SqlDocumentStore(make_sessionmaker(engine))
    async with asyncio.timeout(30):
        await node_a.append([entry("x", "first")])
        assert await node_b.delete_document("x")
        await node_a.append([entry("x", "second")])
        assert await node_b.document_exists("x")
        assert set(shapes_of(await node_b.load("x"))) == {"second"}
