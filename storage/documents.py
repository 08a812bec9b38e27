"""SQL document store: the update log, its compaction into a state, activity and snapshots.

Satisfies ``crdt.store.DocumentStore`` structurally (bytes in, bytes out) and adds the queries the REST API
needs. Imports only ``sqlalchemy`` and ``storage``; never ``crdt`` or ``app``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Select,
    String,
    Table,
    column,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    union_all,
    update,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.errors import unavailable_on_driver_error
from storage.models import Base
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

log = logging.getLogger(__name__)

_documents: Table = Base.metadata.tables["documents"]
_updates: Table = Base.metadata.tables["document_updates"]
_snapshots: Table = Base.metadata.tables["snapshots"]

# Ids per "WHERE id IN (...)" statement: far below the bind-parameter limits of SQLite and asyncpg.
_ID_CHUNK = 500


class SqlDocumentStore:
    """Durable document storage on SQLite or PostgreSQL.

    Every method is one transaction and is safe to call concurrently, from one or many nodes sharing the
    database. Every method may raise :class:`storage.errors.StorageUnavailable` (retryable) when the
    database cannot be reached; nothing is written then. Methods that take ``limit``/``offset``/``keep``
    raise ``ValueError`` for negative values.

    Needs an engine from :func:`storage.db.make_engine` (SQLite foreign keys on, PostgreSQL at the default
    READ COMMITTED isolation level) and the schema migrated to head.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        # canvases whose documents row this process has seen committed: appends skip creating it,
        # which is one statement less on the hot group-commit path
        self._known_documents: set[str] = set()

    @asynccontextmanager
    async def _transaction(self, operation: str) -> AsyncIterator[AsyncSession]:
        with unavailable_on_driver_error(operation):
            async with self._sessionmaker.begin() as session:
                yield session

    # -- the DocumentStore protocol ------------------------------------------------------------------

    async def load(self, canvas_id: str) -> list[bytes]:
        """Return the compacted state (if any) followed by every uncompacted update in append order.

        Called by a room when it loads a canvas. Reads with one SELECT, i.e. from one snapshot of the
        database: a compaction committing meanwhile cannot make an update disappear from the result (two
        statements could see the log after the compaction nulled it but the state from before).

        Args:
            canvas_id: the canvas.

        Returns:
            Yjs updates to apply in order; ``[]`` for an unknown canvas.
        """
        state = select(
            literal_column("0").label("part"),
            literal_column("0").label("id"),
            _documents.c.state.label("data"),
        ).where(_documents.c.canvas_id == canvas_id, _documents.c.state.is_not(None))
        tail = select(
            literal_column("1").label("part"),
            _updates.c.id,
            _updates.c.data,
        ).where(_updates.c.canvas_id == canvas_id, _updates.c.data.is_not(None))
        stmt = union_all(state, tail).order_by(literal_column("part"), literal_column("id"))
        async with self._transaction("load") as session:
            rows = (await session.execute(stmt)).all()
        return [row.data for row in rows]

    async def append(self, entries: Sequence[UpdateEntry]) -> None:
        """Append updates, of one or more canvases, in one transaction: all or nothing.

        Called by rooms' group commit. Returns once the transaction has committed, i.e. the updates are
        durable and visible to :meth:`load` on every node. Creates the documents that do not exist yet. On
        PostgreSQL it does not wait for a compaction of the same canvas that is running meanwhile.

        Args:
            entries: the updates, in the order they were applied; an empty sequence does nothing.

        Raises:
            ValueError: a canvas_id is empty or longer than the schema allows; nothing is written.
        """
        if not entries:
            return
        now = _utcnow()
        rows = []
        for entry in entries:
            check_canvas_id(entry.canvas_id)
            rows.append(
                {
                    "canvas_id": entry.canvas_id,
                    "data": entry.update,
                    "user_id": entry.user_id,
                    "node_id": entry.node_id,
                    "elements": json.dumps(list(entry.elements)),
                    "created_at": now,
                }
            )
        canvas_ids = {entry.canvas_id for entry in entries}
        try:
            await self._append_rows(rows, canvas_ids - self._known_documents, now)
        except IntegrityError:
            # another node deleted a canvas we thought existed: create it again, as a first append would
            self._known_documents -= canvas_ids
            await self._append_rows(rows, canvas_ids, now)
        self._known_documents |= canvas_ids

    async def _append_rows(self, rows: list[dict[str, Any]], create: Collection[str], now: datetime) -> None:
        async with self._transaction("append") as session:
            if create:
                await _ensure_documents(session, create, now)
            await session.execute(insert(_updates), rows)

    async def compact(self, canvas_id: str, merge: Callable[[Sequence[bytes]], bytes]) -> int:
        """Merge the stored state and the uncompacted log into a new state, in one transaction.

        Safe when several nodes compact the same canvas at once: they serialize on the document row, and
        each update is merged exactly once. Merged log rows keep their metadata (activity) with ``data``
        set to NULL. ``merge`` runs on the event loop thread while the document row is locked (appends do
        not wait for it on PostgreSQL; on SQLite every writer does), so it should be quick and CPU-bound.

        Args:
            canvas_id: the canvas.
            merge: called once with the old state (when there is one) followed by the log updates in
                append order; returns the merged update. If it raises, nothing changes and the exception
                propagates.

        Returns:
            How many log updates were merged; 0 (and nothing written) when the log was empty or the
            canvas unknown.
        """
        now = _utcnow()
        # Not sessionmaker.begin(): when there is nothing to merge, the lock-taking version bump must be
        # rolled back, not committed. Leaving the block without commit() rolls back.
        with unavailable_on_driver_error("compact"):
            async with self._sessionmaker() as session:
                # 1. Lock first. The UPDATE takes the row lock on PostgreSQL (FOR NO KEY UPDATE, which does
                # not block the foreign-key checks of concurrent appends) and the database write lock on
                # SQLite, so a second compactor waits here until we commit and then sees our result.
                locked = (
                    await session.execute(
                        update(_documents)
                        .where(_documents.c.canvas_id == canvas_id)
                        .values(version=_documents.c.version + 1, updated_at=now)
                        .returning(_documents.c.state)
                    )
                ).one_or_none()
                if locked is None:
                    return 0
                # 2. Under READ COMMITTED this statement gets a fresh snapshot, taken after the lock: it sees
                # what an earlier compactor committed, and nobody else can null these rows until we commit.
                taken = (
                    await session.execute(
                        select(_updates.c.id, _updates.c.data)
                        .where(_updates.c.canvas_id == canvas_id, _updates.c.data.is_not(None))
                        .order_by(_updates.c.id)
                    )
                ).all()
                if not taken:
                    await session.rollback()
                    return 0
                parts = [row.data for row in taken]
                if locked.state is not None:
                    parts.insert(0, locked.state)
                merged = merge(parts)
                # 3. Null exactly the rows we merged, by id. Never "WHERE id <= max(id)": on PostgreSQL ids
                # come from a sequence at INSERT time but become visible at COMMIT time, so a row with a
                # smaller id can commit after our SELECT and would be dropped without being merged.
                ids = [row.id for row in taken]
                for start in range(0, len(ids), _ID_CHUNK):
                    await session.execute(
                        update(_updates)
                        .where(_updates.c.id.in_(ids[start : start + _ID_CHUNK]))
                        .values(data=None)
                    )
                await session.execute(
                    update(_documents).where(_documents.c.canvas_id == canvas_id).values(state=merged)
                )
                await session.commit()
        log.debug("document compacted", extra={"canvas_id": canvas_id, "merged_updates": len(taken)})
        return len(taken)

    async def tail_length(self, canvas_id: str) -> int:
        """Return how many log updates of ``canvas_id`` are not compacted yet (0 for an unknown canvas).

        Used to decide when to compact; the answer may be stale by the time the caller acts on it.
        """
        stmt = (
            select(func.count())
            .select_from(_updates)
            .where(_updates.c.canvas_id == canvas_id, _updates.c.data.is_not(None))
        )
        async with self._transaction("tail_length") as session:
            return (await session.execute(stmt)).scalar_one()

    # -- documents -------------------------------------------------------------------------------------

    async def list_documents(
        self, *, limit: int, offset: int, canvas_ids: Collection[str] | None = None
    ) -> list[DocumentInfo]:
        """Return one page of stored canvases, ordered by ``canvas_id``.

        Args:
            limit: page size.
            offset: how many canvases to skip.
            canvas_ids: only consider these canvases (e.g. the ones a user may see); ``None`` for all.

        Returns:
            At most ``limit`` entries; an empty list past the end.
        """
        check_non_negative(limit=limit, offset=offset)
        if canvas_ids is not None and not canvas_ids:
            return []
        stmt = (
            select(
                _documents.c.canvas_id,
                _documents.c.version,
                func.coalesce(func.length(_documents.c.state), 0).label("state_size_bytes"),
                _documents.c.created_at,
                _documents.c.updated_at,
            )
            .order_by(_documents.c.canvas_id)
            .limit(limit)
            .offset(offset)
        )
        if canvas_ids is not None:
            stmt = stmt.where(_documents.c.canvas_id.in_(list(canvas_ids)))
        async with self._transaction("list_documents") as session:
            rows = (await session.execute(stmt)).all()
        return [
            DocumentInfo(
                canvas_id=row.canvas_id,
                version=row.version,
                state_size_bytes=row.state_size_bytes,
                created_at=_as_utc(row.created_at),
                updated_at=_as_utc(row.updated_at),
            )
            for row in rows
        ]

    async def document_exists(self, canvas_id: str) -> bool:
        """Return whether ``canvas_id`` has been stored (by an append or a snapshot) and not deleted."""
        stmt = select(exists().where(_documents.c.canvas_id == canvas_id))
        async with self._transaction("document_exists") as session:
            return bool((await session.execute(stmt)).scalar_one())

    async def delete_document(self, canvas_id: str) -> bool:
        """Delete a canvas with its whole log and all its snapshots.

        Does not touch a live room: the caller must unload the room first, or its next append creates the
        canvas again.

        Returns:
            ``True`` if the canvas existed.
        """
        # The log and snapshots go by ON DELETE CASCADE. Deleting the parent row first also takes locks in
        # the same order as compact() (document row, then log rows), so the two cannot deadlock.
        stmt = delete(_documents).where(_documents.c.canvas_id == canvas_id)
        self._known_documents.discard(canvas_id)
        async with self._transaction("delete_document") as session:
            deleted = (await session.execute(stmt)).rowcount > 0
        if deleted:
            log.info("document deleted", extra={"canvas_id": canvas_id})
        return deleted

    async def activity(self, canvas_id: str, *, limit: int, before_id: int | None) -> list[ActivityEntry]:
        """Return a canvas' appended updates, newest first, compacted or not (until pruned).

        Args:
            canvas_id: the canvas.
            limit: page size.
            before_id: only entries with a smaller id: pass the last ``id`` of the previous page.

        Returns:
            At most ``limit`` entries; ``[]`` for an unknown canvas or past the end.
        """
        check_non_negative(limit=limit)
        stmt = (
            select(
                _updates.c.id,
                _updates.c.user_id,
                _updates.c.node_id,
                _updates.c.elements,
                _updates.c.created_at,
            )
            .where(_updates.c.canvas_id == canvas_id)
            .order_by(_updates.c.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            stmt = stmt.where(_updates.c.id < before_id)
        async with self._transaction("activity") as session:
            rows = (await session.execute(stmt)).all()
        return [
            ActivityEntry(
                id=row.id,
                user_id=row.user_id,
                node_id=row.node_id,
                elements=tuple(json.loads(row.elements)),
                created_at=_as_utc(row.created_at),
            )
            for row in rows
        ]

    async def prune_activity(self, older_than: datetime) -> int:
        """Delete compacted log rows (activity only, no data) appended before ``older_than``, all canvases.

        Uncompacted rows are never deleted, whatever their age.

        Args:
            older_than: timezone-aware cutoff.

        Returns:
            How many rows were deleted.

        Raises:
            ValueError: ``older_than`` is naive.
        """
        cutoff = _require_aware(older_than)
        stmt = delete(_updates).where(_updates.c.data.is_(None), _updates.c.created_at < cutoff)
        async with self._transaction("prune_activity") as session:
            deleted = (await session.execute(stmt)).rowcount
        log.info("activity pruned", extra={"deleted_rows": deleted})
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
        """Store a copy of a document's full state, creating the canvas if it does not exist.

        Snapshots are independent of the log and of compaction; they go only with the canvas.

        Args:
            canvas_id: the canvas.
            state: the full Yjs state (e.g. ``doc.get_update()``).
            label: free text, or ``None``.
            kind: ``"manual"``, ``"auto"`` or ``"pre_restore"``.
            author_id: who asked for it, ``None`` for automatic snapshots.
            update_count: how many updates the document had seen, informational.

        Returns:
            The stored snapshot's description, with a new unique ``id``.

        Raises:
            ValueError: unknown ``kind`` or invalid ``canvas_id``; nothing is written.
        """
        check_canvas_id(canvas_id)
        check_snapshot_kind(kind)
        info = SnapshotInfo(
            id=new_snapshot_id(),
            canvas_id=canvas_id,
            label=label,
            kind=kind,
            author_id=author_id,
            size_bytes=len(state),
            update_count=update_count,
            created_at=_utcnow(),
        )
        row: dict[str, Any] = {
            "id": info.id,
            "canvas_id": canvas_id,
            "label": label,
            "kind": kind,
            "author_id": author_id,
            "state": state,
            "size_bytes": info.size_bytes,
            "update_count": update_count,
            "created_at": info.created_at,
        }
        async with self._transaction("save_snapshot") as session:
            await _ensure_documents(session, {canvas_id}, info.created_at)
            await session.execute(insert(_snapshots).values(row))
        return info

    async def list_snapshots(self, canvas_id: str, *, limit: int, offset: int) -> list[SnapshotInfo]:
        """Return one page of a canvas' snapshots, newest first (without their state).

        Returns:
            At most ``limit`` entries; ``[]`` for an unknown canvas or past the end.
        """
        check_non_negative(limit=limit, offset=offset)
        stmt = (
            _select_snapshot_info()
            .where(_snapshots.c.canvas_id == canvas_id)
            .order_by(_snapshots.c.created_at.desc(), _snapshots.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._transaction("list_snapshots") as session:
            rows = (await session.execute(stmt)).all()
        return [_snapshot_info(row) for row in rows]

    async def get_snapshot(self, canvas_id: str, snapshot_id: str) -> tuple[SnapshotInfo, bytes] | None:
        """Return a snapshot's description and state, or ``None`` if it does not exist for that canvas."""
        stmt = _select_snapshot_info(_snapshots.c.state).where(
            _snapshots.c.canvas_id == canvas_id, _snapshots.c.id == snapshot_id
        )
        async with self._transaction("get_snapshot") as session:
            row = (await session.execute(stmt)).one_or_none()
        if row is None:
            return None
        return _snapshot_info(row), row.state

    async def prune_snapshots(self, canvas_id: str, *, kind: str, keep: int) -> int:
        """Delete a canvas' snapshots of one kind except the newest ``keep`` of them.

        Args:
            canvas_id: the canvas.
            kind: only snapshots of this kind are considered.
            keep: how many of the newest to keep; 0 deletes all of that kind.

        Returns:
            How many snapshots were deleted.
        """
        check_snapshot_kind(kind)
        check_non_negative(keep=keep)
        same_kind = (_snapshots.c.canvas_id == canvas_id, _snapshots.c.kind == kind)
        newest = (
            select(_snapshots.c.id)
            .where(*same_kind)
            .order_by(_snapshots.c.created_at.desc(), _snapshots.c.id.desc())
            .limit(keep)
        )
        stmt = delete(_snapshots).where(*same_kind, _snapshots.c.id.not_in(newest))
        async with self._transaction("prune_snapshots") as session:
            return (await session.execute(stmt)).rowcount


async def _ensure_documents(session: AsyncSession, canvas_ids: Collection[str], now: datetime) -> None:
    # Sorted, so that two transactions creating the same documents lock them in the same order.
    ordered = sorted(canvas_ids)
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        # Only insert documents missing from this statement's snapshot. A bare INSERT .. ON CONFLICT on an
        # existing row would wait for a compaction holding that row's lock (the whole merge).
        new = values(column("canvas_id", String), name="new_documents").data([(c,) for c in ordered])
        stmt = (
            postgresql.insert(_documents)
            .from_select(
                ["canvas_id", "created_at", "updated_at"],
                select(
                    new.c.canvas_id,
                    literal(now, DateTime(timezone=True)),
                    literal(now, DateTime(timezone=True)),
                ).where(~exists().where(_documents.c.canvas_id == new.c.canvas_id)),
            )
            .on_conflict_do_nothing(index_elements=["canvas_id"])
        )
    elif dialect == "sqlite":
        stmt = (
            sqlite.insert(_documents)
            .values([{"canvas_id": c, "created_at": now, "updated_at": now} for c in ordered])
            .on_conflict_do_nothing(index_elements=["canvas_id"])
        )
    else:
        raise ValueError(f"expected a sqlite or postgresql database, got {dialect!r}")
    await session.execute(stmt)


def _select_snapshot_info(*extra: Any) -> Select[Any]:
    return select(
        _snapshots.c.id,
        _snapshots.c.canvas_id,
        _snapshots.c.label,
        _snapshots.c.kind,
        _snapshots.c.author_id,
        _snapshots.c.size_bytes,
        _snapshots.c.update_count,
        _snapshots.c.created_at,
        *extra,
    )


def _snapshot_info(row: Any) -> SnapshotInfo:
    return SnapshotInfo(
        id=row.id,
        canvas_id=row.canvas_id,
        label=row.label,
        kind=row.kind,
        author_id=row.author_id,
        size_bytes=row.size_bytes,
        update_count=row.update_count,
        created_at=_as_utc(row.created_at),
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    # SQLite has no time zones: it returns the naive UTC values we stored.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _require_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)
