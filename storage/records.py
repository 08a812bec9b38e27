"""Values the document stores take and return, shared by the SQL and in-memory stores.

Plain Python only: imports neither ``sqlalchemy`` nor ``app`` nor ``crdt``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# Longest canvas_id the schema stores (``app`` validates the format).
CANVAS_ID_LENGTH = 64
SNAPSHOT_KINDS = ("manual", "auto", "pre_restore")


class UpdateEntry(Protocol):
    """What ``append`` needs from each update; ``crdt.store.LogEntry`` satisfies it structurally."""

    @property
    def canvas_id(self) -> str: ...

    @property
    def update(self) -> bytes: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def node_id(self) -> str: ...

    @property
    def elements(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """One stored canvas, without its contents.

    Attributes:
        canvas_id: the canvas.
        version: number of compactions that merged something (0 before the first one).
        state_size_bytes: size of the compacted state; the uncompacted log is not counted.
        created_at: when the canvas was first stored (UTC).
        updated_at: when the compacted state last changed, or ``created_at`` (UTC). Appends do not
            touch it: use :meth:`activity` for the latest edits.
    """

    canvas_id: str
    version: int
    state_size_bytes: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ActivityEntry:
    """One appended update, as shown in a canvas' activity feed (compacted or not).

    Attributes:
        id: log position; larger is newer. Pass it as ``before_id`` to get the next page.
        user_id: who made the change, ``None`` for server-made changes.
        node_id: the node that accepted the update.
        elements: ids of the canvas elements it touched.
        created_at: when it was appended (UTC).
    """

    id: int
    user_id: str | None
    node_id: str
    elements: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A stored snapshot, without its state bytes.

    Attributes:
        id: ``"snp_"`` followed by 16 hex digits.
        canvas_id: the canvas it is a copy of.
        label: free text given by the author, if any.
        kind: ``"manual"``, ``"auto"`` (periodic) or ``"pre_restore"`` (taken before a restore).
        author_id: the user who asked for it, ``None`` for automatic ones.
        size_bytes: size of the state.
        update_count: how many log updates the document had seen, if the caller said so.
        created_at: when it was taken (UTC).
    """

    id: str
    canvas_id: str
    label: str | None
    kind: str
    author_id: str | None
    size_bytes: int
    update_count: int | None
    created_at: datetime


def check_canvas_id(canvas_id: str) -> None:
    """Raise ``ValueError`` unless ``canvas_id`` is a non-empty string that fits the schema."""
    if not isinstance(canvas_id, str) or not 0 < len(canvas_id) <= CANVAS_ID_LENGTH:
        raise ValueError(f"expected a canvas_id of 1..{CANVAS_ID_LENGTH} characters, got {canvas_id!r}")


def check_snapshot_kind(kind: str) -> None:
    """Raise ``ValueError`` unless ``kind`` is one of :data:`SNAPSHOT_KINDS`."""
    if kind not in SNAPSHOT_KINDS:
        raise ValueError(f"expected a snapshot kind in {SNAPSHOT_KINDS}, got {kind!r}")


def check_non_negative(**values: int) -> None:
    """Raise ``ValueError`` if any of the named integer arguments (limit, offset, keep) is negative."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"expected {name} >= 0, got {value}")


def new_snapshot_id() -> str:
    """Return a new random snapshot id: ``"snp_"`` followed by 16 hex digits."""
    return "snp_" + secrets.token_hex(8)
