"""Group commit of accepted updates to the update log, and compaction of the log into the state.

One ``UpdateLog`` per node: every room appends here, and a single writer task commits whatever
arrived during a short window (``commit_window_s``) in one transaction. Nothing is dropped: when
the store fails, the batch stays at the head of the queue and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from pycrdt import Doc

from .store import DocumentStore, LogEntry

log = logging.getLogger(__name__)


def merge_to_state(updates: Sequence[bytes]) -> bytes:
    """Merge Yjs updates into one compact state update (deleted content garbage-collected)."""
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc.get_update()


class UpdateLog:
    """Node-wide group committer in front of a ``DocumentStore``.

    Use as an async context manager: entering starts the writer task, leaving commits everything
    still queued (bounded by ``shutdown_timeout_s``) and stops it.

    Args:
        store: where updates go.
        commit_window_s: how long the writer waits after the first queued update before committing,
            so that updates arriving together share one transaction.
        max_batch: most updates in one transaction.
        compact_after: uncompacted log length of a canvas that triggers a compaction.
    """

    def __init__(
        self,
        store: DocumentStore,
        *,
        commit_window_s: float = 0.01,
        max_batch: int = 2000,
        compact_after: int = 1000,
        retry_max_s: float = 5.0,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._window_s = commit_window_s
        self._max_batch = max_batch
        self._compact_after = compact_after
        self._retry_max_s = retry_max_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._queue: deque[LogEntry] = deque()
        self._queued = 0  # sequence number of the last entry queued
        self._committed = 0  # sequence number of the last entry committed
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tail: dict[str, int] = {}
        self._to_compact: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = True

    async def __aenter__(self) -> UpdateLog:
        self._task = asyncio.create_task(self._run(), name="update-log-writer")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(self._shutdown_timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.error("update log not flushed at shutdown", extra={"pending": len(self._queue)})
            self._task.cancel()

    def append(self, entry: LogEntry) -> int:
        """Queue ``entry``; never blocks. Returns its sequence number for ``wait_durable``."""
        self._queue.append(entry)
        self._queued += 1
        self._wakeup.set()
        return self._queued

    def note_loaded(self, canvas_id: str, tail_length: int) -> None:
        """Record how many uncompacted updates a canvas had when it was loaded (compaction trigger)."""
        self._tail[canvas_id] = tail_length

    async def wait_durable(self, seq: int | None = None) -> None:
        """Wait until entry ``seq`` (default: everything queued so far) is committed."""
        target = self._queued if seq is None else seq
        async with self._progress:
            await self._progress.wait_for(lambda: self._committed >= target)

    async def compact(self, canvas_id: str) -> int:
        """Merge ``canvas_id``'s log into its stored state now; returns how many updates merged."""
        merged = await self._store.compact(canvas_id, merge_to_state)
        self._tail[canvas_id] = 0
        return merged

    def forget(self, canvas_id: str) -> None:
        """Drop bookkeeping for a canvas that was unloaded."""
        self._tail.pop(canvas_id, None)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._closing:
                    await asyncio.sleep(self._window_s)
            batch = [self._queue[i] for i in range(min(len(self._queue), self._max_batch))]
            if not batch:
                continue
            try:
                await self._store.append(batch)
            except Exception:
                self.healthy = False
                log.exception("update log commit failed, retrying", extra={"batch": len(batch)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            self.healthy = True
            backoff = 0.05
            for _ in batch:
                self._queue.popleft()
            async with self._progress:
                self._committed += len(batch)
                self._progress.notify_all()
            await self._compact_long_tails(batch)

    async def _compact_long_tails(self, batch: list[LogEntry]) -> None:
        for entry in batch:
            tail = self._tail.get(entry.canvas_id, 0) + 1
            self._tail[entry.canvas_id] = tail
            if tail >= self._compact_after:
                self._to_compact.add(entry.canvas_id)
        while self._to_compact:
            canvas_id = self._to_compact.pop()
            try:
                await self.compact(canvas_id)
            except Exception:
                log.exception("compaction failed", extra={"canvas_id": canvas_id})
