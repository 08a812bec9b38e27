"""Room lifecycle hooks: ``before_load`` runs before the store read, ``loaded`` before any peer is
seated, ``unloaded`` when the room leaves the manager (unload, delete, failed load)."""

from __future__ import annotations

import asyncio

from crdt.errors import RoomClosed, RoomUnavailable
from crdt.persist import UpdateLog
from crdt.room import RoomManager
from storage.memory import InMemoryDocumentStore


class RecordingStore(InMemoryDocumentStore):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.fail = False

    async def load(self, canvas_id: str) -> list[bytes]:
        self.events.append(f"store.load {canvas_id}")
        if self.fail:
            raise ConnectionError("store down")
        return await super().load(canvas_id)


async def test_hooks_run_in_lifecycle_order() -> None:
    events: list[str] = []
    store = RecordingStore(events)
    async with (
        UpdateLog(store, commit_window_s=0.001) as log,
        RoomManager(store, log, node_id="n1", unload_grace_s=0.01) as rooms,
    ):

        async def before(canvas_id: str) -> None:
            await asyncio.sleep(0)
            events.append(f"before_load {canvas_id}")

        rooms.before_load.append(before)
        rooms.room_observers.loaded.append(lambda room: events.append(f"loaded {room.canvas_id}"))
        rooms.room_observers.unloaded.append(lambda room: events.append(f"unloaded {room.canvas_id}"))
        async with rooms.lease("a") as room:
            assert room.peers == {}
            assert events == ["before_load a", "store.load a", "loaded a"]
        async with asyncio.timeout(5):
            while "unloaded a" not in events:
                await asyncio.sleep(0.01)
        events.clear()
        async with rooms.lease("b"):
            rooms.close_room("b", RoomClosed("deleted"))
        assert events[-1] == "unloaded b"
        events.clear()
        store.fail = True
        try:
            async with rooms.lease("c"):
                raise AssertionError("the load should have failed")
        except RoomUnavailable:
            pass
        assert events == ["before_load c", "store.load c", "unloaded c"]
