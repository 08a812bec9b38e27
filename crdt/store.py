"""The persistence contract the rooms need; ``storage`` satisfies it structurally.

Bytes in, bytes out: the store never parses Yjs updates, so it cannot import pycrdt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One accepted Yjs update, as appended to the update log.

    Attributes:
        canvas_id: the canvas (room) the update belongs to.
        update: the Yjs v1 update bytes, exactly as applied to the live document.
        user_id: who made the change (``None`` for server-made changes).
        node_id: the node that accepted it (each update is stored once, by that node).
        elements: ids of canvas elements the update touched, for the activity feed.
    """

    canvas_id: str
    update: bytes
    user_id: str | None
    node_id: str
    elements: tuple[str, ...] = field(default=())


class DocumentStore(Protocol):
    """Durable storage of canvas documents: compacted state plus an append-only update log.

    Every method is one unit of work (one transaction) and may raise ``Exception`` subclasses
    when the database is unreachable; callers retry.
    """

    async def load(self, canvas_id: str) -> list[bytes]:
        """Return the compacted state (if any) followed by every uncompacted log update in append order.

        Read from one consistent snapshot: a compaction committing concurrently never makes an
        update disappear from the result. An unknown canvas gives ``[]``.
        """
        ...

    async def append(self, entries: Sequence[LogEntry]) -> None:
        """Append updates (of any canvases) in a single transaction: all or nothing.

        Returns once the transaction has committed, i.e. the updates are durable.
        """
        ...

    async def compact(self, canvas_id: str, merge: Callable[[Sequence[bytes]], bytes]) -> int:
        """Merge the stored state and the uncompacted log into a new state in one transaction.

        ``merge`` receives the old state (when one exists) followed by the log updates in
        append order and returns the merged update. Safe when two nodes compact at once: no
        update is lost or merged twice. Returns how many log updates were merged.
        """
        ...

    async def tail_length(self, canvas_id: str) -> int:
        """Number of log updates not yet compacted into the stored state."""
        ...
