"""``InMemoryBroker``: the ``Broker`` of a single node, kept in process memory.

History is kept ``history_ttl_s`` (and at most ``history_max`` publications) per channel; a channel
with no history, no subscriber and no publication for ``history_ttl_s`` is forgotten, and its next
use starts a new epoch. Imports nothing from ``app`` or ``storage``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .broker import (
    HistoryUnavailable,
    Publication,
    PublicationHandler,
    ResetHandler,
    StreamPosition,
    is_ephemeral,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    history: deque[Publication] = field(default_factory=deque)
    handler: PublicationHandler | None = None
    last_used: float = 0.0


class InMemoryBroker:
    """Per-channel streams in a dict; publish delivers synchronously to this node's handler.

    Args:
        history_ttl_s: how long publications stay replayable.
        history_max: most publications kept per channel (the oldest are trimmed first).
        clock: wall clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        history_ttl_s: float = 900.0,
        history_max: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_s = history_ttl_s
        self._max = history_max
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._last_sweep = clock()

    async def publish(self, channel: str, payload: bytes, *, publisher: str | None = None) -> Publication:
        """See ``Broker.publish``; the handler runs before this returns."""
        now = self._clock()
        stream = self._stream(channel, now)
        stream.offset += 1
        stream.last_used = now
        publication = Publication(channel, stream.offset, stream.epoch, payload, publisher, now)
        if not is_ephemeral(channel):
            stream.history.append(publication)
            self._trim(stream, now)
        if stream.handler is not None:
            try:
                stream.handler(publication)
            except Exception:
                log.exception("publication handler failed", extra={"channel": channel})
        self._sweep(now)
        return publication

    async def subscribe(
        self, channel: str, handler: PublicationHandler, *, on_reset: ResetHandler | None = None
    ) -> StreamPosition:
        """See ``Broker.subscribe``; a subscribed channel is never forgotten, so no ``on_reset``."""
        stream = self._stream(channel, self._clock())
        stream.handler = handler
        return StreamPosition(stream.offset, stream.epoch)

    async def unsubscribe(self, channel: str) -> None:
        """See ``Broker.unsubscribe``."""
        stream = self._streams.get(channel)
        if stream is not None:
            stream.handler = None
            stream.last_used = self._clock()

    async def position(self, channel: str) -> StreamPosition:
        """See ``Broker.position``."""
        stream = self._stream(channel, self._clock())
        return StreamPosition(stream.offset, stream.epoch)

    async def history(
        self, channel: str, since: StreamPosition, *, limit: int | None = None
    ) -> list[Publication]:
        """See ``Broker.history``."""
        now = self._clock()
        stream = self._stream(channel, now)
        self._trim(stream, now)
        if since.epoch != stream.epoch:
            raise HistoryUnavailable(f"channel {channel} has a new epoch: its history was lost")
        if since.offset > stream.offset or since.offset < 0:
            raise HistoryUnavailable(
                f"offset {since.offset} is outside channel {channel}'s stream (last offset {stream.offset})"
            )
        first_kept = stream.history[0].offset if stream.history else stream.offset + 1
        if limit is None and since.offset + 1 < first_kept:
            raise HistoryUnavailable(
                f"channel {channel} no longer holds publications {since.offset + 1}..{first_kept - 1}"
            )
        result = [p for p in stream.history if p.offset > since.offset]
        if limit is not None:
            result = result[-limit:] if limit > 0 else []
        return result

    def _stream(self, channel: str, now: float) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(epoch=secrets.token_hex(4), last_used=now)
        return stream

    def _trim(self, stream: _Stream, now: float) -> None:
        history = stream.history
        while history and (len(history) > self._max or now - history[0].time > self._ttl_s):
            history.popleft()

    def _sweep(self, now: float) -> None:
        """Forget idle channels (at most once per TTL/10): their offsets restart under a new epoch."""
        if now - self._last_sweep < self._ttl_s / 10:
            return
        self._last_sweep = now
        for channel, stream in list(self._streams.items()):
            self._trim(stream, now)
            if not stream.history and stream.handler is None and now - stream.last_used > self._ttl_s:
                del self._streams[channel]


if TYPE_CHECKING:
    from .broker import Broker

    def _conforms(broker: InMemoryBroker) -> Broker:
        return broker
