"""Who is on a canvas: JSON sessions and Yjs peers together, by user, with idle/active state.

Node-local here behind the ``Presence`` interface (``app/cluster_redis.py`` has the cluster-wide one).
Pure bookkeeping: it returns the events to announce and never publishes anything itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

PresenceKind = Literal["join", "leave", "idle", "active"]


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A change to announce as a ``presence`` message on ``canvas:ID``."""

    canvas_id: str
    event: PresenceKind
    user_id: str
    user_name: str
    participants: int


class Presence(Protocol):
    """Participants of canvases. Connections are named by a key (a session id or a Yjs peer id)."""

    def join(self, canvas_id: str, user_id: str, user_name: str, connection: str) -> PresenceEvent | None:
        """Count ``connection`` of the user on the canvas; a ``join`` event if the user was absent."""
        ...

    def leave(self, canvas_id: str, user_id: str, connection: str) -> PresenceEvent | None:
        """Forget ``connection``; a ``leave`` event if it was the user's last one on the canvas."""
        ...

    def touch(self, canvas_id: str, user_id: str) -> PresenceEvent | None:
        """The user did something (cursor, edit); an ``active`` event if the user was idle."""
        ...

    def sweep(self) -> list[PresenceEvent]:
        """``idle`` events for users inactive longer than the idle threshold."""
        ...

    def count(self, canvas_id: str) -> int:
        """Distinct users present on the canvas."""
        ...

    def is_present(self, canvas_id: str, user_id: str) -> bool: ...

    async def refresh(self, canvas_id: str) -> None:
        """Bring what this node knows of ``canvas_id``'s participants up to date (before a join)."""
        ...

    def state(self, canvas_id: str, user_id: str) -> Literal["active", "idle"]: ...


@dataclass(slots=True)
class _Participant:
    name: str
    connections: set[str] = field(default_factory=set)
    last_active: float = 0.0
    idle: bool = False


class LocalPresence:
    """``Presence`` of this node's connections.

    Args:
        idle_after_s: inactivity after which a user is announced ``idle``.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, idle_after_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle_after_s = idle_after_s
        self._clock = clock
        self._canvases: dict[str, dict[str, _Participant]] = {}

    def join(self, canvas_id: str, user_id: str, user_name: str, connection: str) -> PresenceEvent | None:
        """See ``Presence.join``."""
        users = self._canvases.setdefault(canvas_id, {})
        participant = users.get(user_id)
        fresh = participant is None
        if participant is None:
            participant = users[user_id] = _Participant(user_name)
        participant.connections.add(connection)
        participant.last_active = self._clock()
        participant.idle = False
        return PresenceEvent(canvas_id, "join", user_id, user_name, len(users)) if fresh else None

    def leave(self, canvas_id: str, user_id: str, connection: str) -> PresenceEvent | None:
        """See ``Presence.leave``."""
        users = self._canvases.get(canvas_id)
        participant = users.get(user_id) if users else None
        if users is None or participant is None or connection not in participant.connections:
            return None
        participant.connections.discard(connection)
        if participant.connections:
            return None
        del users[user_id]
        if not users:
            del self._canvases[canvas_id]
        return PresenceEvent(canvas_id, "leave", user_id, participant.name, len(users))

    def touch(self, canvas_id: str, user_id: str) -> PresenceEvent | None:
        """See ``Presence.touch``."""
        users = self._canvases.get(canvas_id)
        participant = users.get(user_id) if users else None
        if users is None or participant is None:
            return None
        participant.last_active = self._clock()
        if not participant.idle:
            return None
        participant.idle = False
        return PresenceEvent(canvas_id, "active", user_id, participant.name, len(users))

    def sweep(self) -> list[PresenceEvent]:
        """See ``Presence.sweep``."""
        now = self._clock()
        events = []
        for canvas_id, users in self._canvases.items():
            for user_id, participant in users.items():
                if not participant.idle and now - participant.last_active >= self._idle_after_s:
                    participant.idle = True
                    events.append(PresenceEvent(canvas_id, "idle", user_id, participant.name, len(users)))
        return events

    def count(self, canvas_id: str) -> int:
        """See ``Presence.count``."""
        return len(self._canvases.get(canvas_id, ()))

    def is_present(self, canvas_id: str, user_id: str) -> bool:
        return user_id in self._canvases.get(canvas_id, {})

    async def refresh(self, canvas_id: str) -> None:
        """See ``Presence.refresh``: this node knows everything already."""

    def state(self, canvas_id: str, user_id: str) -> Literal["active", "idle"]:
        participant = self._canvases.get(canvas_id, {}).get(user_id)
        return "idle" if participant is not None and participant.idle else "active"
