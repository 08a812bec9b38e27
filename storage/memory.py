"""In-memory document store with the same contract as ``SqlDocumentStore``, for tests without a database.

Plain Python: never imports ``sqlalchemy``, ``crdt`` or ``app``. Not durable; one process only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from storage.records import (
    ActivityEntry,
    DocumentInfo,
    SnapshotInfo,
    UpdateEntry,
    check_canvas_id,
    check_non_negative,
    check_snapshot_kind,
    new_snapshot_id,
)


@dataclass(slots=True)
class _Document:
    state: bytes | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class _Update:
    id: int
    data: bytes | None
    user_id: str | None
    node_id: str
    elements: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Snapshot:
    seq: int  # tie-break for equal created_at: insertion order
    info: SnapshotInfo
    state: bytes


class InMemoryDocumentStore:
    """Document storage in plain dicts, for unit tests of rooms and routes.

    Same methods, arguments, results and errors (except ``StorageUnavailable``) as
    :class:`storage.documents.SqlDocumentStore`. No method awaits anything, so each one is atomic with
    respect to other tasks on the event loop.
    """

    def __init__(self) -> None:
        self._documents: dict[str, _Document] = {}
        self._updates: dict[str, list[_Update]] = {}
        self._snapshots: dict[str, list[_Snapshot]] = {}
        self._update_ids = itertools.count(1)
        self._snapshot_seqs = itertools.count(1)

    # -- the DocumentStore protocol ------------------------------------------------------------------

    async def load(self, canvas_id: str) -> list[bytes]:
        """See :meth:`storage.documents.SqlDocumentStore.load`."""
        document = self._documents.get(canvas_id)
        if document is None:
            return []
        parts = [] if document.state is None else [document.state]
        parts.extend(row.data for row in self._updates[canvas_id] if row.data is not None)
        return parts

    async def append(self, entries: Sequence[UpdateEntry]) -> None:
        """See :meth:`storage.documents.SqlDocumentStore.append`."""
        for entry in entries:
            check_canvas_id(entry.canvas_id)
        now = datetime.now(UTC)
        for entry in entries:
            self._ensure_document(entry.canvas_id, now)
            self._updates[entry.canvas_id].append(
                _Update(
                    id=next(self._update_ids),
                    data=bytes(entry.update),
                    user_id=entry.user_id,
                    node_id=entry.node_id,
                    elements=tuple(entry.elements),
                    created_at=now,
                )
            )

    async def compact(self, canvas_id: str, merge: Callable[[Sequence[bytes]], bytes]) -> int:
        """See :meth:`storage.documents.SqlDocumentStore.compact`."""
        document = self._documents.get(canvas_id)
        if document is None:
            return 0
        taken = [row for row in self._updates[canvas_id] if row.data is not None]
        if not taken:
            return 0
        parts = [row.data for row in taken if row.data is not None]
        if document.state is not None:
            parts.insert(0, document.state)
        merged = merge(parts)  # may raise: nothing has changed yet
        for row in taken:
            row.data = None
        document.state = merged
        document.version += 1
        document.updated_at = datetime.now(UTC)
        return len(taken)

    async def tail_length(self, canvas_id: str) -> int:
        """See :meth:`storage.documents.SqlDocumentStore.tail_length`."""
        return sum(1 for row in self._updates.get(canvas_id, ()) if row.data is not None)

    # -- documents -------------------------------------------------------------------------------------

    async def list_documents(
        self, *, limit: int, offset: int, canvas_ids: Collection[str] | None = None
    ) -> list[DocumentInfo]:
        """See :meth:`storage.documents.SqlDocumentStore.list_documents`."""
        check_non_negative(limit=limit, offset=offset)
        wanted = sorted(self._documents if canvas_ids is None else set(canvas_ids) & self._documents.keys())
        return [
            DocumentInfo(
                canvas_id=canvas_id,
                version=self._documents[canvas_id].version,
                state_size_bytes=len(self._documents[canvas_id].state or b""),
                created_at=self._documents[canvas_id].created_at,
                updated_at=self._documents[canvas_id].updated_at,
            )
            for canvas_id in wanted[offset : offset + limit]
        ]

    async def document_exists(self, canvas_id: str) -> bool:
        """See :meth:`storage.documents.SqlDocumentStore.document_exists`."""
        return canvas_id in self._documents

    async def delete_document(self, canvas_id: str) -> bool:
        """See :meth:`storage.documents.SqlDocumentStore.delete_document`."""
        existed = self._documents.pop(canvas_id, None) is not None
        self._updates.pop(canvas_id, None)
        self._snapshots.pop(canvas_id, None)
        return existed

    async def activity(self, canvas_id: str, *, limit: int, before_id: int | None) -> list[ActivityEntry]:
        """See :meth:`storage.documents.SqlDocumentStore.activity`."""
        check_non_negative(limit=limit)
        rows = [
            row
            for row in reversed(self._updates.get(canvas_id, []))
            if before_id is None or row.id < before_id
        ]
        return [
            ActivityEntry(
                id=row.id,
                user_id=row.user_id,
                node_id=row.node_id,
                elements=row.elements,
                created_at=row.created_at,
            )
            for row in rows[:limit]
        ]

    async def prune_activity(self, older_than: datetime) -> int:
        """See :meth:`storage.documents.SqlDocumentStore.prune_activity`."""
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise ValueError(f"expected a timezone-aware datetime, got naive {older_than.isoformat()}")
        deleted = 0
        for canvas_id, rows in self._updates.items():
            kept = [row for row in rows if row.data is not None or row.created_at >= older_than]
            deleted += len(rows) - len(kept)
            self._updates[canvas_id] = kept
        return deleted

    # -- snapshots -------------------------------------------------------------------------------------

    async def save_snapshot(
        self,
        canvas_id: str,
        state: bytes,
        *,
        label: str | None,
        kind: str,
        author_id: str | None,
        update_count: int | None = None,
    ) -> SnapshotInfo:
        """See :meth:`storage.documents.SqlDocumentStore.save_snapshot`."""
        check_canvas_id(canvas_id)
        check_snapshot_kind(kind)
        now = datetime.now(UTC)
        self._ensure_document(canvas_id, now)
        info = SnapshotInfo(
            id=new_snapshot_id(),
            canvas_id=canvas_id,
            label=label,
            kind=kind,
            author_id=author_id,
            size_bytes=len(state),
            update_count=update_count,
            created_at=now,
        )
        self._snapshots[canvas_id].append(_Snapshot(next(self._snapshot_seqs), info, bytes(state)))
        return info

    async def list_snapshots(self, canvas_id: str, *, limit: int, offset: int) -> list[SnapshotInfo]:
        """See :meth:`storage.documents.SqlDocumentStore.list_snapshots`."""
        check_non_negative(limit=limit, offset=offset)
        newest_first = self._newest_first(self._snapshots.get(canvas_id, []))
        return [snapshot.info for snapshot in newest_first[offset : offset + limit]]

    async def get_snapshot(self, canvas_id: str, snapshot_id: str) -> tuple[SnapshotInfo, bytes] | None:
        """See :meth:`storage.documents.SqlDocumentStore.get_snapshot`."""
        for snapshot in self._snapshots.get(canvas_id, ()):
            if snapshot.info.id == snapshot_id:
                return snapshot.info, snapshot.state
        return None

    async def prune_snapshots(self, canvas_id: str, *, kind: str, keep: int) -> int:
        """See :meth:`storage.documents.SqlDocumentStore.prune_snapshots`."""
        check_snapshot_kind(kind)
        check_non_negative(keep=keep)
        snapshots = self._snapshots.get(canvas_id, [])
        doomed = {s.seq for s in self._newest_first([s for s in snapshots if s.info.kind == kind])[keep:]}
        self._snapshots[canvas_id] = [s for s in snapshots if s.seq not in doomed]
        return len(doomed)

    # -- helpers ---------------------------------------------------------------------------------------

    def _ensure_document(self, canvas_id: str, now: datetime) -> None:
        if canvas_id not in self._documents:
            self._documents[canvas_id] = _Document(state=None, version=0, created_at=now, updated_at=now)
            self._updates[canvas_id] = []
            self._snapshots[canvas_id] = []

    @staticmethod
    def _newest_first(snapshots: list[_Snapshot]) -> list[_Snapshot]:
        return sorted(snapshots, key=lambda s: (s.info.created_at, s.seq), reverse=True)
