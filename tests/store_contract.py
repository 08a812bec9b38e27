"""The document store contract, shared by the SQL (integration) and in-memory (unit) store tests.

Each ``check_*`` coroutine takes a fresh, empty store and asserts one part of the contract; the test
modules run every entry of :data:`CHECKS` against their store. Uses real pycrdt updates.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pycrdt import Doc, Map, merge_updates

from crdt.store import DocumentStore, LogEntry

Check = Callable[[Any], Awaitable[None]]
CHECKS: list[Check] = []


def contract(check: Check) -> Check:
    CHECKS.append(check)
    return check


# -- helpers -------------------------------------------------------------------------------------------


def shape_update(key: str, value: object = 1) -> bytes:
    """A Yjs update, from a new client, that sets ``shapes[key] = value``."""
    doc = Doc()
    shapes = doc.get("shapes", type=Map)
    before = doc.get_state()
    shapes[key] = value
    return doc.get_update(before)


def shapes_of(parts: Sequence[bytes]) -> dict[str, Any]:
    """Apply ``parts`` in order to a fresh doc and return its ``shapes`` map as plain Python."""
    doc = Doc()
    for part in parts:
        doc.apply_update(part)
    return doc.get("shapes", type=Map).to_py() or {}


def entry(canvas_id: str, key: str, *, user_id: str | None = "user-1", node_id: str = "node-a") -> LogEntry:
    return LogEntry(
        canvas_id=canvas_id, update=shape_update(key), user_id=user_id, node_id=node_id, elements=(key,)
    )


def merge(parts: Sequence[bytes]) -> bytes:
    return merge_updates(*parts)


def assert_utc(value: datetime) -> None:
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


def assert_conforms(store_class: type) -> None:
    """The class has every ``DocumentStore`` method, async, with the same parameters."""
    for name, expected in inspect.getmembers(DocumentStore, inspect.isfunction):
        if name.startswith("_"):
            continue
        actual = getattr(store_class, name)
        assert inspect.iscoroutinefunction(actual), name
        assert list(inspect.signature(actual).parameters) == list(inspect.signature(expected).parameters), (
            name
        )


# -- the contract --------------------------------------------------------------------------------------


@contract
async def check_append_load_round_trip(store: Any) -> None:
    entries = [entry("c1", f"k{i}") for i in range(5)]
    await store.append(entries[:2])
    await store.append(entries[2:])
    parts = await store.load("c1")
    assert parts == [e.update for e in entries]
    assert shapes_of(parts) == {f"k{i}": 1 for i in range(5)}
    assert await store.tail_length("c1") == 5
    assert await store.document_exists("c1")


@contract
async def check_unknown_canvas(store: Any) -> None:
    assert await store.load("nope") == []
    assert await store.tail_length("nope") == 0
    assert await store.compact("nope", merge) == 0
    assert not await store.document_exists("nope")
    assert await store.activity("nope", limit=10, before_id=None) == []
    assert await store.list_snapshots("nope", limit=10, offset=0) == []
    assert await store.get_snapshot("nope", "snp_0000000000000000") is None
    assert not await store.delete_document("nope")
    await store.append([])  # no-op
    assert await store.list_documents(limit=10, offset=0) == []


@contract
async def check_append_several_canvases_at_once(store: Any) -> None:
    await store.append([entry("a", "x"), entry("b", "y"), entry("a", "z")])
    assert shapes_of(await store.load("a")) == {"x": 1, "z": 1}
    assert shapes_of(await store.load("b")) == {"y": 1}
    assert [d.canvas_id for d in await store.list_documents(limit=10, offset=0)] == ["a", "b"]


@contract
async def check_invalid_append_writes_nothing(store: Any) -> None:
    with pytest.raises(ValueError, match="canvas_id"):
        await store.append([entry("ok", "x"), entry("x" * 65, "y")])
    assert await store.load("ok") == []
    assert not await store.document_exists("ok")


@contract
async def check_compaction_keeps_document_and_activity(store: Any) -> None:
    await store.append([entry("c", f"k{i}") for i in range(4)])
    before = shapes_of(await store.load("c"))

    seen: list[list[bytes]] = []

    def recording_merge(parts: Sequence[bytes]) -> bytes:
        seen.append(list(parts))
        return merge(parts)

    assert await store.compact("c", recording_merge) == 4
    parts = await store.load("c")
    assert len(parts) == 1
    assert shapes_of(parts) == before
    assert await store.tail_length("c") == 0
    assert len(seen[0]) == 4  # no state yet: the four log updates only
    # the log rows stay, as activity
    assert [a.elements for a in await store.activity("c", limit=10, before_id=None)] == [
        ("k3",),
        ("k2",),
        ("k1",),
        ("k0",),
    ]
    (info,) = await store.list_documents(limit=10, offset=0)
    assert info.version == 1
    assert info.state_size_bytes == len(parts[0])

    # nothing to merge: nothing written
    assert await store.compact("c", recording_merge) == 0
    assert len(seen) == 1
    assert (await store.list_documents(limit=10, offset=0))[0].version == 1

    # the next compaction gets the old state first, then the new updates
    late = entry("c", "late")
    await store.append([late])
    assert await store.load("c") == [parts[0], late.update]
    assert await store.compact("c", recording_merge) == 1
    assert seen[1] == [parts[0], late.update]
    assert shapes_of(await store.load("c")) == {**before, "late": 1}
    assert (await store.list_documents(limit=10, offset=0))[0].version == 2


@contract
async def check_failing_merge_changes_nothing(store: Any) -> None:
    await store.append([entry("c", "a"), entry("c", "b")])
    parts = await store.load("c")

    def broken(parts: Sequence[bytes]) -> bytes:
        raise ZeroDivisionError("merge failed")

    with pytest.raises(ZeroDivisionError):
        await store.compact("c", broken)
    assert await store.load("c") == parts
    assert await store.tail_length("c") == 2
    assert (await store.list_documents(limit=10, offset=0))[0].version == 0


@contract
async def check_activity_order_and_paging(store: Any) -> None:
    await store.append([entry("c", "a", user_id=None, node_id="n1")])
    await store.append([entry("c", "b"), entry("other", "zz"), entry("c", "c")])
    await store.compact("c", merge)
    await store.append([entry("c", "d")])
    newest = await store.activity("c", limit=10, before_id=None)
    assert [a.elements for a in newest] == [("d",), ("c",), ("b",), ("a",)]
    assert [a.id for a in newest] == sorted((a.id for a in newest), reverse=True)
    assert newest[-1].user_id is None and newest[-1].node_id == "n1"
    assert newest[0].user_id == "user-1" and newest[0].node_id == "node-a"
    for a in newest:
        assert_utc(a.created_at)
    page1 = await store.activity("c", limit=2, before_id=None)
    page2 = await store.activity("c", limit=2, before_id=page1[-1].id)
    page3 = await store.activity("c", limit=2, before_id=page2[-1].id)
    assert page1 + page2 == newest and page3 == []
    assert await store.activity("c", limit=0, before_id=None) == []


@contract
async def check_prune_activity_keeps_uncompacted(store: Any) -> None:
    await store.append([entry("c", "a"), entry("c", "b")])
    await store.compact("c", merge)
    await store.append([entry("c", "c")])
    with pytest.raises(ValueError, match="timezone"):
        await store.prune_activity(datetime.now())  # naive on purpose
    assert await store.prune_activity(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await store.prune_activity(datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert [a.elements for a in await store.activity("c", limit=10, before_id=None)] == [("c",)]
    assert shapes_of(await store.load("c")) == {"a": 1, "b": 1, "c": 1}


@contract
async def check_list_documents_pagination(store: Any) -> None:
    ids = [f"canvas-{i}" for i in range(5)]
    await store.append([entry(c, "k") for c in reversed(ids)])
    page = await store.list_documents(limit=2, offset=0)
    assert [d.canvas_id for d in page] == ids[:2]
    assert [d.canvas_id for d in await store.list_documents(limit=2, offset=2)] == ids[2:4]
    assert [d.canvas_id for d in await store.list_documents(limit=2, offset=4)] == ids[4:]
    assert await store.list_documents(limit=2, offset=5) == []
    only = await store.list_documents(limit=10, offset=0, canvas_ids={"canvas-3", "canvas-1", "missing"})
    assert [d.canvas_id for d in only] == ["canvas-1", "canvas-3"]
    assert await store.list_documents(limit=10, offset=0, canvas_ids=[]) == []
    for d in page:
        assert d.version == 0 and d.state_size_bytes == 0
        assert_utc(d.created_at)
        assert_utc(d.updated_at)
    with pytest.raises(ValueError, match="limit"):
        await store.list_documents(limit=-1, offset=0)


@contract
async def check_snapshots(store: Any) -> None:
    manual = []
    for i in range(3):
        manual.append(await store.save_snapshot("c", b"m%d" % i, label=f"v{i}", kind="manual", author_id="u"))
        await asyncio.sleep(0.002)  # distinct created_at, whatever the clock resolution
    auto = await store.save_snapshot("c", b"auto", label=None, kind="auto", author_id=None, update_count=7)
    assert await store.document_exists("c")  # a snapshot creates the canvas
    assert await store.load("c") == []

    assert auto.id.startswith("snp_") and len(auto.id) == 20
    assert (auto.kind, auto.label, auto.author_id, auto.update_count, auto.size_bytes) == (
        "auto",
        None,
        None,
        7,
        4,
    )
    assert_utc(auto.created_at)
    listed = await store.list_snapshots("c", limit=10, offset=0)
    assert listed == [auto, *reversed(manual)]
    assert await store.list_snapshots("c", limit=2, offset=1) == [manual[2], manual[1]]

    got = await store.get_snapshot("c", manual[0].id)
    assert got == (manual[0], b"m0")
    assert await store.get_snapshot("other", manual[0].id) is None
    assert await store.get_snapshot("c", "snp_ffffffffffffffff") is None

    with pytest.raises(ValueError, match="kind"):
        await store.save_snapshot("c", b"x", label=None, kind="weekly", author_id=None)
    with pytest.raises(ValueError, match="keep"):
        await store.prune_snapshots("c", kind="manual", keep=-1)

    assert await store.prune_snapshots("c", kind="manual", keep=1) == 2
    assert await store.list_snapshots("c", limit=10, offset=0) == [auto, manual[2]]
    assert await store.prune_snapshots("c", kind="manual", keep=1) == 0
    assert await store.prune_snapshots("c", kind="auto", keep=0) == 1
    assert await store.list_snapshots("c", limit=10, offset=0) == [manual[2]]


@contract
async def check_delete_document_removes_everything(store: Any) -> None:
    await store.append([entry("doomed", "a"), entry("kept", "b")])
    await store.compact("doomed", merge)
    await store.append([entry("doomed", "c")])
    await store.save_snapshot("doomed", b"s", label=None, kind="manual", author_id=None)
    assert await store.delete_document("doomed")
    assert not await store.document_exists("doomed")
    assert await store.load("doomed") == []
    assert await store.tail_length("doomed") == 0
    assert await store.activity("doomed", limit=10, before_id=None) == []
    assert await store.list_snapshots("doomed", limit=10, offset=0) == []
    assert not await store.delete_document("doomed")
    assert shapes_of(await store.load("kept")) == {"b": 1}
    # appending again starts a new, empty document
    await store.append([entry("doomed", "new")])
    assert shapes_of(await store.load("doomed")) == {"new": 1}
    assert (await store.list_documents(limit=10, offset=0, canvas_ids=["doomed"]))[0].version == 0
