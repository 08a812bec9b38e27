"""Cross-node relay of Yjs awareness (who is here, their cursors) over an ephemeral broker channel.

Awareness is ephemeral state, so this relay is at most once, with no history and no repair: each
node publishes the awareness changes of its own peers of a canvas on ``keys.awareness_channel``
(history-less, as its name ends in ``:cursor``), and applies other nodes' changes to its room under
one owner per remote node, so that its editors see remote cursors. A lost message is superseded by
the next change, and Yjs clients drop states nobody renews within 30 s (y-protocols' outdated
timeout), which also clears the states of a node that died. Imports nothing from ``app``/``storage``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType

from . import protocol
from .broker import Broker, Publication
from .errors import BadMessage
from .keys import awareness_channel, parse_awareness_channel
from .protocol import AwarenessEntry, AwarenessUpdate
from .room import Room, RoomManager

log = logging.getLogger(__name__)

REMOTE_OWNER_PREFIX = "node:"  # owner of awareness states that came from another node
_NODE_ID_MAX_BYTES = 255


class AwarenessRelay:
    """Publishes local awareness changes of every loaded room and applies other nodes' ones.

    Use as an async context manager, entered after the ``RoomManager``. One background task
    (un)subscribes canvases as rooms load and unload and publishes queued changes in order; a
    broker that fails or is slow only costs awareness messages (bounded by ``queue_max``).

    Args:
        rooms: this node's rooms.
        broker: the broker shared by the nodes.
        broker_timeout_s: longest wait for one broker call.
        queue_max: most awareness messages waiting to be published; older ones are dropped first.
    """

    def __init__(
        self, rooms: RoomManager, broker: Broker, *, broker_timeout_s: float = 2.0, queue_max: int = 10_000
    ) -> None:
        self._rooms = rooms
        self._broker = broker
        self.node_id = rooms.node_id
        self._timeout_s = broker_timeout_s
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=queue_max)
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._header = _node_header(self.node_id)

    async def __aenter__(self) -> AwarenessRelay:
        observers = self._rooms.room_observers
        observers.loaded.append(self._on_loaded)
        observers.unloaded.append(self._on_unloaded)
        observers.awareness.append(self._on_awareness)
        self._wanted.update(room.canvas_id for room in self._rooms.rooms())
        self._task = asyncio.create_task(self._run(), name="awareness-relay")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        observers = self._rooms.room_observers
        observers.loaded.remove(self._on_loaded)
        observers.unloaded.remove(self._on_unloaded)
        observers.awareness.remove(self._on_awareness)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- room events (synchronous, from the event loop) ----------------------------------------

    def _on_loaded(self, room: Room) -> None:
        self._wanted.add(room.canvas_id)
        self._wakeup.set()

    def _on_unloaded(self, room: Room) -> None:
        self._wanted.discard(room.canvas_id)
        self._wakeup.set()

    def _on_awareness(self, room: Room, entries: list[AwarenessEntry], owner: str) -> None:
        if owner.startswith(REMOTE_OWNER_PREFIX) or not entries:
            return  # another node's states: that node published them
        self._queue.append((room.canvas_id, self._header + protocol.encode_awareness(entries)))
        self._wakeup.set()

    # -- the background task -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._follow_rooms()
            while self._queue:
                canvas_id, payload = self._queue.popleft()
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await self._broker.publish(
                            awareness_channel(canvas_id), payload, publisher=self.node_id
                        )
                except Exception as exc:  # ephemeral: the next change supersedes it
                    log.debug("awareness not relayed", extra={"canvas_id": canvas_id, "error": repr(exc)})

    async def _follow_rooms(self) -> None:
        for canvas_id in sorted(self._wanted - self._subscribed):
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._broker.subscribe(awareness_channel(canvas_id), self._on_publication)
                self._subscribed.add(canvas_id)
            except Exception as exc:
                log.warning(
                    "awareness relay subscribe failed", extra={"canvas_id": canvas_id, "error": repr(exc)}
                )
                asyncio.get_running_loop().call_later(1.0, self._wakeup.set)  # try again soon
        for canvas_id in sorted(self._subscribed - self._wanted):
            self._subscribed.discard(canvas_id)
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._broker.unsubscribe(awareness_channel(canvas_id))
            except Exception as exc:  # its deliveries find no room here and are dropped
                log.warning(
                    "awareness relay unsubscribe failed", extra={"canvas_id": canvas_id, "error": repr(exc)}
                )

    def _on_publication(self, publication: Publication) -> None:
        canvas_id = parse_awareness_channel(publication.channel)
        room = self._rooms.get(canvas_id) if canvas_id is not None else None
        if room is None:
            return
        try:
            node_id, frame = _split(publication.payload)
            if node_id == self.node_id:
                return
            message = protocol.parse_client_frame(
                frame, max_frame_bytes=len(frame), max_sync_frame_bytes=len(frame)
            )
        except BadMessage as exc:
            log.warning("bad awareness relay message", extra={"canvas_id": canvas_id, "error": str(exc)})
            return
        if isinstance(message, AwarenessUpdate):
            room.set_server_awareness(list(message.entries), owner=REMOTE_OWNER_PREFIX + node_id)


def _node_header(node_id: str) -> bytes:
    raw = node_id.encode("utf-8")[:_NODE_ID_MAX_BYTES]
    return bytes((len(raw),)) + raw


def _split(payload: bytes) -> tuple[str, bytes]:
    if not payload or len(payload) < 1 + payload[0]:
        raise BadMessage("awareness relay message shorter than its node id")
    end = 1 + payload[0]
    try:
        return payload[1:end].decode("utf-8"), payload[end:]
    except UnicodeDecodeError as exc:
        raise BadMessage("node id is not UTF-8") from exc
