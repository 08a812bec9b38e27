"""Canvas-level operations of the REST API: current state, snapshots, restore, delete; automatic snapshots.

``CanvasService`` composes the rooms (``crdt``) with the document store (``storage``); the routers in
``app/routes`` only check permissions and translate. Document logic lives in ``crdt.versions``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from crdt.canvas import to_json
from crdt.errors import RoomClosed
from crdt.persist import UpdateLog, merge_to_state
from crdt.room import Change, Origin, Room, RoomManager
from crdt.versions import load_version, restore, same
from storage.documents import SqlDocumentStore
from storage.errors import StorageUnavailable
from storage.records import SnapshotInfo

from .errors import NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CanvasState:
    """A canvas' full Yjs state and where it was read from (``live``: this node's loaded document)."""

    state: bytes
    live: bool


@dataclass(frozen=True, slots=True)
class RestoreOutcome:
    """What ``CanvasService.restore`` did.

    Attributes:
        writes: sets and deletes made on the live document; 0 when it already equalled the version.
        pre_restore: the snapshot of the live canvas taken just before the restore (``None`` when
            nothing changed, so nothing needed saving).
    """

    writes: int
    pre_restore: SnapshotInfo | None


class CanvasService:
    """Reads and changes whole canvases on this node.

    One per node, built by the lifespan. Operations on one canvas that change it or its snapshots
    (snapshot, restore, delete) are serialized by a per-canvas lock; every storage wait is bounded by
    ``timeout_s`` and turns into ``StorageUnavailable`` (HTTP 503) when it runs out.

    Args:
        store: the document store.
        rooms: this node's rooms.
        update_log: the node's update log, waited on so that stored views include accepted updates.
        pre_restore_keep: how many ``pre_restore`` snapshots to keep per canvas.
        timeout_s: longest wait on storage or on a room load.
    """

    def __init__(
        self,
        store: SqlDocumentStore,
        rooms: RoomManager,
        update_log: UpdateLog,
        *,
        pre_restore_keep: int,
        timeout_s: float,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self._log = update_log
        self._pre_restore_keep = pre_restore_keep
        self._timeout_s = timeout_s
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def locked(self, canvas_id: str) -> AsyncIterator[None]:
        """Hold ``canvas_id``'s lock: no snapshot, restore or delete of it runs meanwhile on this node."""
        lock = self._locks.get(canvas_id)
        if lock is None:
            lock = self._locks[canvas_id] = asyncio.Lock()
        async with lock:
            yield

    async def bounded(self, awaitable: Awaitable[T], operation: str) -> T:
        """Await ``awaitable`` for at most ``timeout_s``.

        Raises:
            StorageUnavailable: it did not finish in time.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                return await awaitable
        except TimeoutError:
            raise StorageUnavailable(f"{operation} took longer than {self._timeout_s:g} s") from None

    async def wait_durable(self) -> None:
        """Wait until every update accepted so far on this node is stored (bounded by ``timeout_s``)."""
        await self.bounded(self._log.wait_durable(), "waiting for the update log")

    async def exists(self, canvas_id: str) -> bool:
        """Whether the canvas is loaded on this node or stored."""
        return self.rooms.get(canvas_id) is not None or await self.bounded(
            self.store.document_exists(canvas_id), "looking the canvas up"
        )

    async def current_state(self, canvas_id: str) -> CanvasState | None:
        """The canvas' current full state: the live document if loaded here, else the stored one.

        Returns:
            ``None`` when the canvas is neither loaded nor stored.
        """
        room = self.rooms.get(canvas_id)
        if room is not None:
            return CanvasState(room.doc.get_update(), live=True)
        updates = await self.bounded(self.store.load(canvas_id), "loading the canvas")
        if not updates:
            if not await self.bounded(self.store.document_exists(canvas_id), "looking the canvas up"):
                return None
            return CanvasState(merge_to_state([]), live=False)
        return CanvasState(merge_to_state(updates), live=False)

    async def current_json(self, canvas_id: str) -> tuple[dict[str, Any], bool]:
        """The canvas as JSON (``crdt.canvas.to_json``) and whether it came from the live document.

        Raises:
            NotFound: the canvas is neither loaded nor stored.
        """
        room = self.rooms.get(canvas_id)
        if room is not None:
            return to_json(room.doc), True
        current = await self.current_state(canvas_id)
        if current is None:
            raise NotFound(f"no canvas {canvas_id}")
        return to_json(load_version(current.state)), current.live

    # -- snapshots --------------------------------------------------------------------------------------

    async def take_snapshot(
        self, canvas_id: str, *, label: str | None, kind: str, author_id: str | None
    ) -> SnapshotInfo | None:
        """Store the canvas' current state as a snapshot.

        Returns:
            The snapshot, or ``None`` when the canvas does not exist (nothing is stored: a snapshot
            never creates a canvas).
        """
        async with self.locked(canvas_id):
            return await self._take(canvas_id, label=label, kind=kind, author_id=author_id)

    async def _take(
        self, canvas_id: str, *, label: str | None, kind: str, author_id: str | None
    ) -> SnapshotInfo | None:
        current = await self.current_state(canvas_id)
        if current is None:
            return None
        return await self.bounded(
            self.store.save_snapshot(canvas_id, current.state, label=label, kind=kind, author_id=author_id),
            "saving the snapshot",
        )

    async def snapshot(self, canvas_id: str, snapshot_id: str) -> tuple[SnapshotInfo, bytes]:
        """A stored snapshot's description and state.

        Raises:
            NotFound: no such snapshot of this canvas.
        """
        found = await self.bounded(self.store.get_snapshot(canvas_id, snapshot_id), "reading the snapshot")
        if found is None:
            raise NotFound(f"no snapshot {snapshot_id} of canvas {canvas_id}")
        return found

    async def restore(
        self, canvas_id: str, snapshot_id: str, *, user_id: str, user_name: str
    ) -> RestoreOutcome:
        """Make the live canvas equal to snapshot ``snapshot_id`` through one ordinary CRDT change.

        Loads the canvas' room (if needed) and, unless the canvas already equals the version, first
        stores a ``pre_restore`` snapshot of it (restoring that undoes this restore), then applies
        ``crdt.versions.restore`` in one ``Room.transact``: every connected editor receives it as one
        update, and it is logged, attributed to ``user_id``. Returns after the update is durable.
        Concurrent edits made while the restore runs are merged by the CRDT like any other edits.

        Raises:
            NotFound: no such snapshot, or the canvas was deleted meanwhile.
            RoomUnavailable, StorageUnavailable: storage is down or too slow (nothing changed then,
                unless the update log stalls after the change; the change is kept and retried).
        """
        async with self.locked(canvas_id):
            _, state = await self.snapshot(canvas_id, snapshot_id)
            version = load_version(state)
            async with self.rooms.lease(canvas_id) as room:  # load bounded by load_timeout_s
                if same(to_json(room.doc), to_json(version)):
                    return RestoreOutcome(0, None)
                pre_restore = await self.bounded(
                    self.store.save_snapshot(
                        canvas_id,
                        room.doc.get_update(),
                        label=f"before restoring {snapshot_id}",
                        kind="pre_restore",
                        author_id=user_id,
                    ),
                    "saving the pre-restore snapshot",
                )
                if room.closed:
                    raise NotFound(f"canvas {canvas_id} was deleted during the restore")
                with room.transact(user_id, user_name) as doc:
                    writes = restore(doc, version)
            await self.wait_durable()
            await self.bounded(
                self.store.prune_snapshots(canvas_id, kind="pre_restore", keep=self._pre_restore_keep),
                "pruning snapshots",
            )
        log.info(
            "canvas restored",
            extra={"canvas_id": canvas_id, "snapshot_id": snapshot_id, "user_id": user_id, "writes": writes},
        )
        return RestoreOutcome(writes, pre_restore)

    # -- delete -----------------------------------------------------------------------------------------

    async def editors(self, canvas_id: str, *, recent: int = 200) -> set[str]:
        """The canvas' editors: users connected to it on this node and users of its ``recent`` log entries."""
        room = self.rooms.get(canvas_id)
        users = {peer.user_id for peer in room.peers.values()} if room is not None else set()
        entries = await self.bounded(
            self.store.activity(canvas_id, limit=recent, before_id=None), "reading the activity"
        )
        return users | {entry.user_id for entry in entries if entry.user_id is not None}

    async def delete(self, canvas_id: str) -> tuple[bool, set[str]]:
        """Delete a canvas with its log and snapshots, disconnecting its Yjs clients (close 4404).

        Returns:
            Whether it existed (loaded or stored), and its editors (see :meth:`editors`) as they were.
        """
        async with self.locked(canvas_id):
            room = self.rooms.get(canvas_id)
            await self.wait_durable()
            editors = await self.editors(canvas_id)
            async with self.rooms.deleting(canvas_id, RoomClosed("canvas deleted")):
                await self.wait_durable()  # queued updates of the closed room must not recreate it afterwards
                deleted = await self.bounded(self.store.delete_document(canvas_id), "deleting the canvas")
        if deleted or room is not None:
            log.info("canvas deleted", extra={"canvas_id": canvas_id})
        return deleted or room is not None, editors


class AutoSnapshotter:
    """Automatic snapshots: every ``every_updates`` accepted updates of a canvas, and on a schedule.

    Counts the updates this node accepts per canvas (from Yjs peers and server-side changes). A canvas
    gets an ``auto`` snapshot as soon as it reaches ``every_updates`` updates since its last one, and
    every ``interval_s`` each canvas changed since its last one gets one too (also after it unloaded:
    the snapshot is then read from storage). Only the newest ``keep`` automatic snapshots of a canvas
    are kept. Snapshots are taken by one background task owned by this context manager.

    Args:
        canvases: where snapshots are taken.
        every_updates: the count trigger; 0 disables it.
        interval_s: the schedule; 0 disables it.
        keep: automatic snapshots kept per canvas.
    """

    def __init__(self, canvases: CanvasService, *, every_updates: int, interval_s: float, keep: int) -> None:
        self._canvases = canvases
        self._every = every_updates
        self._interval_s = interval_s
        self._keep = keep
        self._counts: dict[str, int] = {}
        self._due: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AutoSnapshotter:
        self._canvases.rooms.observers.append(self._observe)
        if self._every or self._interval_s:
            self._task = asyncio.create_task(self._run(), name="auto-snapshots")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._canvases.rooms.observers.remove(self._observe)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def pending(self, canvas_id: str) -> int:
        """Updates of ``canvas_id`` accepted since its last automatic snapshot (0 when none)."""
        return self._counts.get(canvas_id, 0)

    def forget(self, canvas_id: str) -> None:
        """Stop tracking a deleted canvas."""
        self._counts.pop(canvas_id, None)
        self._due.discard(canvas_id)

    def _observe(self, room: Room, change: Change) -> None:
        if change.origin not in (Origin.PEER, Origin.SERVER):
            return
        count = self._counts.get(change.canvas_id, 0) + 1
        self._counts[change.canvas_id] = count
        if self._every and count >= self._every:
            self._due.add(change.canvas_id)
            self._wakeup.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._interval_s if self._interval_s else None
        while True:
            try:
                async with asyncio.timeout_at(next_sweep):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            due, self._due = self._due, set()
            if next_sweep is not None and loop.time() >= next_sweep:
                due |= set(self._counts)
                next_sweep = loop.time() + self._interval_s
            for canvas_id in sorted(due):
                await self.snapshot_now(canvas_id)

    async def snapshot_now(self, canvas_id: str) -> SnapshotInfo | None:
        """Take an automatic snapshot of ``canvas_id`` now and prune the old ones.

        Never raises for storage errors: they are logged and the canvas stays pending for the next
        sweep. Returns the snapshot, or ``None`` (failed, or the canvas no longer exists).
        """
        pending = self._counts.pop(canvas_id, 0)
        try:
            info = await self._canvases.take_snapshot(canvas_id, label=None, kind="auto", author_id=None)
            if info is not None:
                await self._canvases.bounded(
                    self._canvases.store.prune_snapshots(canvas_id, kind="auto", keep=self._keep),
                    "pruning snapshots",
                )
        except Exception as exc:
            self._counts[canvas_id] = self._counts.get(canvas_id, 0) + pending
            log.warning("auto snapshot failed", extra={"canvas_id": canvas_id, "error": type(exc).__name__})
            return None
        if info is not None:
            log.debug("auto snapshot taken", extra={"canvas_id": canvas_id, "snapshot_id": info.id})
        return info
