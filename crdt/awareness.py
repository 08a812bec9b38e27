"""The room's awareness table (who is here, cursors), following y-protocols' awareness rules.

Kept as validated JSON text: the server only relays and remembers states, it never interprets them,
except for the JSON protocol bridge which reads and writes cursor fields through ``states()``.
"""

from __future__ import annotations

import json
from typing import Any

from .protocol import AwarenessEntry


class AwarenessTable:
    """Latest awareness state per Yjs client id, and which peer announced it."""

    def __init__(self) -> None:
        self._entries: dict[int, AwarenessEntry] = {}
        self._owner: dict[int, str] = {}

    def apply(self, entries: tuple[AwarenessEntry, ...], owner: str) -> list[AwarenessEntry]:
        """Apply entries from peer ``owner``; returns those that changed the table.

        The y-protocols rule: an entry wins when its clock is newer, or when it removes a state
        with the same clock.
        """
        changed = []
        for entry in entries:
            current = self._entries.get(entry.client_id)
            if current is not None and (
                entry.clock < current.clock or (entry.clock == current.clock and not entry.removed)
            ):
                continue
            if entry.removed:
                self._entries.pop(entry.client_id, None)
                self._owner.pop(entry.client_id, None)
            else:
                self._entries[entry.client_id] = entry
                self._owner[entry.client_id] = owner
            changed.append(entry)
        return changed

    def remove_owner(self, owner: str) -> list[AwarenessEntry]:
        """Drop every state announced by ``owner``; returns the removal entries to broadcast."""
        removals = []
        for client_id in [cid for cid, who in self._owner.items() if who == owner]:
            entry = self._entries.pop(client_id)
            del self._owner[client_id]
            removals.append(AwarenessEntry(client_id, entry.clock + 1, "null"))
        return removals

    def entries(self) -> list[AwarenessEntry]:
        return list(self._entries.values())

    def states(self) -> dict[int, dict[str, Any]]:
        """Decoded states by client id (the values were validated as JSON objects on the way in)."""
        return {cid: json.loads(entry.state_json) for cid, entry in self._entries.items()}

    def owner(self, client_id: int) -> str | None:
        return self._owner.get(client_id)

    def __len__(self) -> int:
        return len(self._entries)
