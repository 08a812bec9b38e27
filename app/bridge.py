"""The JSON <-> Yjs bridge: ``canvas_update`` becomes a Yjs transaction, document changes become
``canvas_updated``, cursors cross between awareness and ``cursor_moved``, and presence covers both.

Runs inside room callbacks (synchronous, during a transaction): it only reads what the room hands
it and submits publications to the ordered ``Publisher``. No sockets here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from crdt.canvas import ELEMENTS, LAYERS, Actor, Edit, ItemChange, apply_edit, wire_action
from crdt.peer import Peer
from crdt.protocol import AwarenessEntry
from crdt.room import Change, Origin, Room, RoomManager

from .channels import canvas_channel
from .codec import server_message
from .hub import Publisher
from .presence import Presence, PresenceEvent
from .session import new_trace_id

log = logging.getLogger(__name__)

SERVER_SESSION = "server"  # sessionId of messages no session or peer caused
SESSION_PREFIX = "sess_"


@dataclass(slots=True)
class EditTag:
    """Passed through ``Room.transact`` so the observer knows which JSON message made the change."""

    session_id: str
    trace_id: str
    action: str
    element_id: str | None
    layer_id: str | None
    log_seq: int | None = None
    publications: list[asyncio.Future[Any]] = field(default_factory=list)


class Bridge:
    """Connects the rooms of ``rooms`` to channel publications; registers itself as their observer.

    Args:
        rooms: the node's room manager.
        publisher: ordered publication queue.
        presence: who is on which canvas.
        lock_ttl_s: lifetime of element locks taken through ``canvas_update`` ``lock``.
    """

    def __init__(
        self, rooms: RoomManager, publisher: Publisher, presence: Presence, *, lock_ttl_s: float
    ) -> None:
        self._publisher = publisher
        self.presence = presence
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._cursors: dict[tuple[str, int], tuple[Any, Any]] = {}
        rooms.room_observers.changes.append(self.on_change)
        rooms.room_observers.awareness.append(self.on_awareness)
        rooms.room_observers.peers.append(self.on_peer)

    # -- JSON -> Yjs ---------------------------------------------------------------------------

    def edit(self, room: Room, actor: Actor, edit: Edit, *, session_id: str, trace_id: str) -> EditTag:
        """Apply one ``canvas_update`` as a transaction on ``room``'s document.

        Returns the tag the observer filled in: the update log sequence (for the durable ``ack``)
        and the futures of the ``canvas_updated`` publications (for the ack's offset).

        Raises:
            EditRefused, ElementLocked: nothing was changed.
        """
        tag = EditTag(session_id, trace_id, edit.action, edit.element_id, edit.layer_id)
        now_ms = int(time.time() * 1000)
        with room.transact(actor.id, actor.name, tag=tag) as doc:
            apply_edit(doc, edit, actor, now_ms=now_ms, lock_ttl_ms=self._lock_ttl_ms)
        return tag

    def cursor(
        self,
        room: Room,
        *,
        session_id: str,
        user_id: str,
        user_name: str,
        client_id: int,
        clock: int,
        positions: list[dict[str, Any]],
        trace_id: str,
    ) -> None:
        """A JSON client's cursor: into the room's awareness (Yjs sees it) and out as ``cursor_moved``."""
        canvas_id = room.canvas_id
        latest = positions[-1]
        position = {"x": latest["x"], "y": latest["y"]}
        self._announce(self.presence.touch(canvas_id, user_id), session_id)
        state = self.presence.state(canvas_id, user_id)
        awareness_state = {
            "user": {"id": user_id, "name": user_name},
            "cursor": position,
            "state": state,
            "client": "json",
        }
        room.set_server_awareness([AwarenessEntry(client_id, clock, json.dumps(awareness_state))], session_id)
        data: dict[str, Any] = {
            "canvasId": canvas_id,
            "position": position,
            "user": {"id": user_id, "name": user_name},
            "state": state,
        }
        if len(positions) > 1:
            data["positions"] = positions
        self._publish(canvas_channel(canvas_id, "cursor"), "cursor_moved", data, session_id, trace_id)

    def join(self, canvas_id: str, user_id: str, user_name: str, connection: str) -> None:
        """A JSON session starts taking part in ``canvas_id`` (announces ``join`` for a new user)."""
        self._announce(self.presence.join(canvas_id, user_id, user_name, connection), connection)

    def leave(self, room: Room, user_id: str, connection: str) -> None:
        """A JSON session stops taking part: its cursor leaves the awareness, ``leave`` if last."""
        room.remove_server_awareness(connection)
        self._announce(self.presence.leave(room.canvas_id, user_id, connection), connection)

    def sweep_idle(self) -> None:
        """Announce users who became idle (called periodically by the gateway)."""
        for event in self.presence.sweep():
            self._announce(event, SERVER_SESSION)

    # -- Yjs -> JSON (room observers) ----------------------------------------------------------

    def on_change(self, room: Room, change: Change) -> None:
        """Announce every element/layer a PEER or SERVER transaction touched as ``canvas_updated``."""
        if change.origin not in (Origin.PEER, Origin.SERVER):
            return  # BROKER changes are announced by the node that accepted them
        tag = change.tag if isinstance(change.tag, EditTag) else None
        if tag is not None:
            publisher, trace_id = tag.session_id, tag.trace_id
            tag.log_seq = change.log_seq
        else:
            publisher, trace_id = change.peer_id or SERVER_SESSION, new_trace_id()
        user = {"id": change.user_id or SERVER_SESSION, "name": change.user_name or SERVER_SESSION}
        channel = canvas_channel(room.canvas_id)
        for item in change.items:
            data = _describe(room.canvas_id, item, tag)
            data["user"] = user
            future = self._publish(channel, "canvas_updated", data, publisher, trace_id)
            if tag is not None:
                tag.publications.append(future)
        if (change.origin is Origin.PEER or tag is not None) and change.user_id is not None:  # an edit
            self._announce(self.presence.touch(room.canvas_id, change.user_id), publisher)

    def on_awareness(self, room: Room, entries: list[AwarenessEntry], owner: str) -> None:
        """Yjs editors' awareness cursors become ``cursor_moved`` (JSON sessions' own are skipped)."""
        if owner.startswith(SESSION_PREFIX):
            return
        peer = room.peers.get(owner)
        for entry in entries:
            key = (room.canvas_id, entry.client_id)
            if entry.removed:
                self._cursors.pop(key, None)
                continue
            if peer is None:
                continue
            cursor = _cursor_of(entry.state_json)
            if cursor is None or self._cursors.get(key) == cursor:
                continue
            self._cursors[key] = cursor
            self._announce(self.presence.touch(room.canvas_id, peer.user_id), owner)
            data = {
                "canvasId": room.canvas_id,
                "position": {"x": cursor[0], "y": cursor[1]},
                "user": {"id": peer.user_id, "name": peer.user_name},
                "state": self.presence.state(room.canvas_id, peer.user_id),
            }
            self._publish(
                canvas_channel(room.canvas_id, "cursor"), "cursor_moved", data, owner, new_trace_id()
            )

    def on_peer(self, room: Room, peer: Peer, joined: bool) -> None:
        """Yjs editors count in presence like JSON sessions."""
        if joined:
            event = self.presence.join(room.canvas_id, peer.user_id, peer.user_name, peer.peer_id)
        else:
            event = self.presence.leave(room.canvas_id, peer.user_id, peer.peer_id)
        self._announce(event, peer.peer_id)

    # -- publishing ----------------------------------------------------------------------------

    def _announce(self, event: PresenceEvent | None, publisher: str) -> None:
        if event is None:
            return
        data = {
            "canvasId": event.canvas_id,
            "event": event.event,
            "user": {"id": event.user_id, "name": event.user_name},
            "participants": event.participants,
        }
        self._publish(canvas_channel(event.canvas_id), "presence", data, publisher, new_trace_id())

    def _publish(
        self, channel: str, kind: str, data: dict[str, Any], publisher: str, trace_id: str
    ) -> asyncio.Future[Any]:
        return self._publisher.submit(channel, server_message(kind, publisher, data, trace_id), publisher)


def _describe(canvas_id: str, item: ItemChange, tag: EditTag | None) -> dict[str, Any]:
    """``canvas_updated.data`` (without ``user``) for one changed element or layer."""
    if tag is not None and item.item_id == (tag.layer_id if item.root == LAYERS else tag.element_id):
        action = tag.action
    else:
        action = wire_action(item)
    properties = dict(item.properties)
    for key in item.removed:
        properties[key] = None
    if item.root == ELEMENTS:
        data: dict[str, Any] = {"canvasId": canvas_id, "action": action, "elementId": item.item_id}
    else:
        data = {"canvasId": canvas_id, "action": action, "layerId": item.item_id}
    if item.action != "delete":
        data["properties"] = properties
        if item.removed:  # tells a removed field apart from one set to null
            data["removedProperties"] = sorted(item.removed)
    if item.position is not None:
        data["position"] = item.position
    return data


def _cursor_of(state_json: str) -> tuple[Any, Any] | None:
    """The ``cursor: {x, y}`` of an awareness state (already validated as a JSON object), if any."""
    try:
        state = json.loads(state_json)
    except ValueError:
        return None
    cursor = state.get("cursor") if isinstance(state, dict) else None
    if not isinstance(cursor, dict):
        return None
    x, y = cursor.get("x"), cursor.get("y")
    for value in (x, y):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
    return x, y
