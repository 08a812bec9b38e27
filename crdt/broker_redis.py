"""``RedisBroker``: the ``Broker`` shared by every node, on Redis Streams (redis-py asyncio).

The only crdt module that imports redis; key names come from ``keys.py``. Imports nothing from
``app`` or ``storage``.

Layout, per channel (both keys share the hash tag ``{<channel>}``):

- ``<prefix>:ch:{<channel>}:meta`` -- hash ``epoch`` (random hex) and ``offset`` (last offset).
- ``<prefix>:ch:{<channel>}:log`` -- stream, entry id ``<offset>-0``, fields ``p`` payload,
  ``u`` publisher (empty for none), ``t`` publication time (Redis clock, ms), ``e`` epoch.

Publishing is one Lua script: create the meta with a fresh epoch when it is missing (history lost:
the log is deleted with it), ``HINCRBY`` the offset, ``XADD`` with the offset-derived id and
``MAXLEN``, drop entries older than the TTL (a bounded number per call; ``history`` refuses older
ones anyway), and refresh both keys' expiry (log: the TTL; meta: ``meta_ttl_s``, and subscribed
nodes keep refreshing it, so an epoch never changes under a subscriber just because nobody published).
``:cursor`` channels use the same scheme with a short stream (``ephemeral_max`` entries,
``ephemeral_ttl_s``) only as a delivery buffer; ``history`` never returns their publications.

Delivery: one reader task per node on a connection of its own runs ``XREAD BLOCK`` over the logs of
all subscribed channels plus the node's probe stream, and calls each channel's handler in offset
order. ``subscribe`` adds an entry to the probe stream to wake the reader. Each channel remembers the
last delivered offset and epoch; an entry that does not follow it (trimmed while the node was behind,
or another epoch) and a meta whose epoch or offset no longer matches (checked after every reconnect
and every ``validate_interval_s``) are losses: ``on_reset`` is called and delivery continues from the
channel's current position.

Faults: every command runs under ``op_timeout_s`` (connect: ``connect_timeout_s``) without retries.
A failure opens a circuit: until a probe succeeds again, ``publish``/``history``/``subscribe`` raise
``BrokerUnavailable`` at once, without touching the network. A monitor task adds a probe entry every
``probe_interval_s``; a probe the reader has not seen within ``probe_deadline_s`` means the reader is
connected but deaf, and its connection is rebuilt (then revalidated, so nothing is skipped).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .broker import (
    BrokerUnavailable,
    HistoryUnavailable,
    Publication,
    PublicationHandler,
    ResetHandler,
    StreamPosition,
    is_ephemeral,
)
from .keys import channel_log_key, channel_meta_key, node_probe_key, parse_channel_log_key

log = logging.getLogger(__name__)

_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)

# KEYS: meta, log. ARGV: payload, publisher, epoch if new, maxlen, ttl_ms, meta_ttl_ms, trim_scan.
_PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0',
  'p', ARGV[1], 'u', ARGV[2], 't', now, 'e', epoch)
if type(added) == 'table' and added.err then
  -- the log holds ids this meta never gave out: it is not this epoch's log; start a new epoch
  epoch = ARGV[3]
  offset = 1
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', offset)
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '1-0', 'p', ARGV[1], 'u', ARGV[2], 't', now, 'e', epoch)
end
local ttl = tonumber(ARGV[5])
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[7])
local keep = nil
for _, entry in ipairs(oldest) do
  local fields = entry[2]
  local stamp = 0
  for i = 1, #fields, 2 do
    if fields[i] == 't' then stamp = tonumber(fields[i + 1]) end
  end
  if stamp >= now - ttl then keep = entry[1] break end
end
if keep and keep ~= oldest[1][1] then redis.call('XTRIM', KEYS[2], 'MINID', keep) end
redis.call('PEXPIRE', KEYS[2], ttl + 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {offset, epoch, now}
"""

# KEYS: meta, log. ARGV: epoch if new, meta_ttl_ms, and optionally an epoch and offset this node
# delivered: when the meta went back below that offset in that epoch (writes lost by a failover),
# the epoch is replaced, so that no offset is ever given out twice in one epoch.
# Returns the channel's position, creating it.
_ENSURE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and ARGV[3] and epoch == ARGV[3] then
  if tonumber(redis.call('HGET', KEYS[1], 'offset')) < tonumber(ARGV[4]) then epoch = nil end
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {tonumber(redis.call('HGET', KEYS[1], 'offset')), epoch}
"""

# KEYS: meta, log. ARGV: since offset, limit (-1: all). Returns epoch (or false), offset, now, entries.
_HISTORY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] then return {false, 0, now, {}} end
local start = tonumber(ARGV[1]) + 1
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', start .. '-0', 'COUNT', ARGV[2])
elseif tonumber(ARGV[2]) < 0 then
  entries = redis.call('XRANGE', KEYS[2], start .. '-0', '+')
end
return {meta[1], tonumber(meta[2]), now, entries}
"""


@dataclass(slots=True)
class _Channel:
    handler: PublicationHandler
    on_reset: ResetHandler | None
    epoch: str
    offset: int  # last offset delivered to the handler (or the subscription position)
    ephemeral: bool


class RedisBroker:
    """Channel streams in Redis. Use as an async context manager (owns the reader and monitor tasks).

    Entering does not need Redis to be up: the broker starts with its circuit open and closes it at
    the first successful probe, so a node can start (and serve its local clients) during an outage.

    Args:
        url: ``redis://`` or ``rediss://`` URL.
        node_id: this node's name (its probe stream is private to it).
        prefix: first part of every key.
        history_ttl_s: how long publications stay replayable.
        history_max: most publications kept per channel.
        meta_ttl_s: how long a channel's epoch and offset outlive its last use (default: twice the TTL).
        ephemeral_max: stream length of ``:cursor`` channels (a delivery buffer only).
        ephemeral_ttl_s: expiry of ``:cursor`` channels' streams.
        op_timeout_s: longest wait for one command.
        connect_timeout_s: longest wait for a connection.
        block_s: longest ``XREAD BLOCK`` of the reader.
        probe_interval_s: how often the monitor probes Redis and the reader.
        probe_deadline_s: a probe the reader has not seen by then restarts the reader.
        validate_interval_s: how often subscribed channels' epochs are checked (and their meta kept alive).
        read_count: most entries per stream in one ``XREAD``.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        prefix: str = "maily",
        history_ttl_s: float = 900.0,
        history_max: int = 10_000,
        meta_ttl_s: float | None = None,
        ephemeral_max: int = 100,
        ephemeral_ttl_s: float = 60.0,
        op_timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        block_s: float = 2.0,
        probe_interval_s: float = 1.0,
        probe_deadline_s: float = 3.0,
        validate_interval_s: float = 5.0,
        read_count: int = 1000,
    ) -> None:
        self.node_id = node_id
        self._url = url
        self._prefix = prefix
        self._ttl_ms = int(history_ttl_s * 1000)
        self._max = history_max
        self._meta_ttl_ms = int((meta_ttl_s if meta_ttl_s is not None else 2 * history_ttl_s) * 1000)
        self._ephemeral_max = ephemeral_max
        self._ephemeral_ttl_ms = int(ephemeral_ttl_s * 1000)
        self._op_timeout_s = op_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._block_ms = int(block_s * 1000)
        self._probe_interval_s = probe_interval_s
        self._probe_deadline_s = probe_deadline_s
        self._validate_interval_s = validate_interval_s
        self._read_count = read_count
        self._probe_key = node_probe_key(prefix, node_id)
        self._channels: dict[str, _Channel] = {}
        self._client = self._new_client(single=False)
        self._publish_script = self._client.register_script(_PUBLISH)
        self._ensure_script = self._client.register_script(_ENSURE)
        self._history_script = self._client.register_script(_HISTORY)
        self._up = False
        self._down_logged = False
        self._reader_connected = False
        self._probe_seq = 0
        self._probe_seen = 0
        self._probes: deque[tuple[int, float]] = deque()  # (seq, loop time sent), not yet seen
        self._read_deadline: asyncio.Timeout | None = None
        self._restart_requested = False
        self._pool_stale = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.reader_restarts = 0  # reader connections rebuilt because a probe was not seen (metrics, tests)

    def _new_client(self, *, single: bool, read_timeout_s: float | None = None) -> Redis:
        return Redis.from_url(
            self._url,
            socket_timeout=read_timeout_s or self._op_timeout_s,
            socket_connect_timeout=self._connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=single,
            decode_responses=False,
        )

    @property
    def healthy(self) -> bool:
        """True while commands reach Redis and the reader is connected."""
        return self._up and self._reader_connected

    async def __aenter__(self) -> RedisBroker:
        try:
            await self._send_probe()
            self._mark_up()
        except _NETWORK_ERRORS as exc:
            self._mark_down(exc)  # start degraded: the monitor closes the circuit when Redis answers
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="redis-broker-reader"),
            asyncio.create_task(self._monitor(), name="redis-broker-monitor"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        pending = set(self._tasks)
        while pending:  # a cancellation that lands on an expiring asyncio.timeout can be lost (3.11)
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._tasks = []
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._client.aclose()
        except _NETWORK_ERRORS:
            pass

    # -- Broker --------------------------------------------------------------------------------

    async def publish(self, channel: str, payload: bytes, *, publisher: str | None = None) -> Publication:
        """See ``Broker.publish``: one script call; delivery (also to this node) goes through the reader.

        Raises:
            BrokerUnavailable: Redis is down or did not answer within ``op_timeout_s``; the
                publication may or may not have been made (at most once).
        """
        ephemeral = is_ephemeral(channel)
        keys = [channel_meta_key(self._prefix, channel), channel_log_key(self._prefix, channel)]
        args = [
            payload,
            publisher or "",
            _new_epoch(),
            self._ephemeral_max if ephemeral else self._max,
            self._ephemeral_ttl_ms if ephemeral else self._ttl_ms,
            self._meta_ttl_ms,
            64,
        ]
        offset, epoch, now_ms = await self._call(self._publish_script(keys=keys, args=args))
        return Publication(channel, int(offset), _text(epoch), payload, publisher, int(now_ms) / 1000)

    async def subscribe(
        self, channel: str, handler: PublicationHandler, *, on_reset: ResetHandler | None = None
    ) -> StreamPosition:
        """See ``Broker.subscribe``. A channel this node already reads keeps its position.

        Raises:
            BrokerUnavailable: Redis is down (for a channel this node does not read yet).
        """
        current = self._channels.get(channel)
        if current is not None:
            current.handler, current.on_reset = handler, on_reset
            return StreamPosition(current.offset, current.epoch)
        position = await self._ensure(channel)
        current = self._channels.get(channel)  # another subscribe may have won while we waited
        if current is not None:
            current.handler, current.on_reset = handler, on_reset
            return StreamPosition(current.offset, current.epoch)
        self._channels[channel] = _Channel(
            handler, on_reset, position.epoch, position.offset, is_ephemeral(channel)
        )
        await self._wake_reader()
        return position

    async def unsubscribe(self, channel: str) -> None:
        """See ``Broker.unsubscribe``; local only (the reader stops naming the channel)."""
        self._channels.pop(channel, None)

    async def position(self, channel: str) -> StreamPosition:
        """See ``Broker.position``. For a channel this node reads: where its delivery stands (no I/O).

        Raises:
            BrokerUnavailable: Redis is down (for a channel this node does not read).
        """
        current = self._channels.get(channel)
        if current is not None:
            return StreamPosition(current.offset, current.epoch)
        return await self._ensure(channel)

    async def history(
        self, channel: str, since: StreamPosition, *, limit: int | None = None
    ) -> list[Publication]:
        """See ``Broker.history``; publications older than the TTL count as trimmed.

        Raises:
            HistoryUnavailable: as ``Broker.history`` says.
            BrokerUnavailable: Redis is down or too slow.
        """
        keys = [channel_meta_key(self._prefix, channel), channel_log_key(self._prefix, channel)]
        limit_arg = -1 if limit is None else max(limit, 0)
        epoch_raw, offset, now_ms, entries = await self._call(
            self._history_script(keys=keys, args=[max(since.offset, 0), limit_arg])
        )
        if epoch_raw is None or _text(epoch_raw) != since.epoch:
            raise HistoryUnavailable(f"channel {channel} has a new epoch: its history was lost")
        epoch = _text(epoch_raw)
        if since.offset > offset or since.offset < 0:
            raise HistoryUnavailable(
                f"offset {since.offset} is outside channel {channel}'s stream (last offset {offset})"
            )
        if limit is not None:
            entries = list(reversed(entries))
        oldest_ms = now_ms - self._ttl_ms
        publications = [_publication(channel, entry, epoch) for entry in entries]
        publications = [p for p in publications if p.time * 1000 >= oldest_ms]
        if is_ephemeral(channel):
            publications = []
        if limit is None and since.offset < offset:
            if not publications or publications[0].offset != since.offset + 1:
                first = publications[0].offset if publications else offset + 1
                raise HistoryUnavailable(
                    f"channel {channel} no longer holds publications {since.offset + 1}..{first - 1}"
                )
        return publications

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, awaitable: Any) -> Any:
        """Await one command under the timeout; network failures open the circuit."""
        if not self._up:
            awaitable.close()
            raise BrokerUnavailable("redis is unavailable")
        try:
            await self._drop_stale_connections()
            async with asyncio.timeout(self._op_timeout_s):
                return await awaitable
        except ResponseError:
            raise
        except _NETWORK_ERRORS as exc:
            await self._mark_down_and_drop(exc)
            raise BrokerUnavailable(f"redis did not answer: {type(exc).__name__}") from exc

    async def _mark_down_and_drop(self, exc: BaseException) -> None:
        self._mark_down(exc)
        await self._drop_stale_connections()

    async def _drop_stale_connections(self) -> None:
        """After an outage, close pooled connections so that none to the old server is reused."""
        if not self._pool_stale:
            return
        self._pool_stale = False
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._client.connection_pool.disconnect()
        except _NETWORK_ERRORS:
            pass

    async def _ensure(self, channel: str) -> StreamPosition:
        keys = [channel_meta_key(self._prefix, channel), channel_log_key(self._prefix, channel)]
        offset, epoch = await self._call(
            self._ensure_script(keys=keys, args=[_new_epoch(), self._meta_ttl_ms])
        )
        return StreamPosition(int(offset), _text(epoch))

    async def _wake_reader(self) -> None:
        try:
            await self._probe()
        except BrokerUnavailable:
            pass  # the reader reconnects and reads every channel when Redis is back

    async def _probe(self) -> None:
        if not self._up:
            raise BrokerUnavailable("redis is unavailable")
        try:
            await self._send_probe()
        except _NETWORK_ERRORS as exc:
            await self._mark_down_and_drop(exc)
            raise BrokerUnavailable(f"redis did not answer: {type(exc).__name__}") from exc

    async def _send_probe(self) -> None:
        """Add one probe entry to this node's stream (the reader notes it, and wakes up)."""
        self._probe_seq += 1
        seq = self._probe_seq
        await self._drop_stale_connections()
        async with asyncio.timeout(self._op_timeout_s):
            await self._client.xadd(self._probe_key, {"n": seq}, maxlen=16, approximate=False)
        if seq > self._probe_seen:  # only probes known to be in the stream are waited for
            self._probes.append((seq, asyncio.get_running_loop().time()))
            while len(self._probes) > 64:
                self._probes.popleft()

    def _mark_down(self, exc: BaseException) -> None:
        if self._up or not self._down_logged:
            log.error("redis unavailable", extra={"node_id": self.node_id, "error": type(exc).__name__})
            self._down_logged = True
        self._up = False
        self._pool_stale = True

    def _mark_up(self) -> None:
        if not self._up:
            log.info("redis available", extra={"node_id": self.node_id})
        self._up = True
        self._down_logged = False

    async def _monitor(self) -> None:
        """Probe Redis (closing the circuit on success), detect a deaf reader, keep metas alive."""
        loop = asyncio.get_running_loop()
        last_validate = loop.time()
        while not self._closing:
            try:
                await self._send_probe()
                self._mark_up()
            except _NETWORK_ERRORS as exc:
                await self._mark_down_and_drop(exc)
            while self._probes and self._probes[0][0] <= self._probe_seen:
                self._probes.popleft()
            now = loop.time()
            if (
                self._up
                and self._reader_connected
                and self._probes
                and now - self._probes[0][1] > self._probe_deadline_s
            ):
                log.error("redis reader missed its probes, reconnecting", extra={"node_id": self.node_id})
                self.reader_restarts += 1
                self._probes.clear()
                self._restart_requested = True
                if self._read_deadline is not None:
                    self._read_deadline.reschedule(now)
            if self._up and now - last_validate >= self._validate_interval_s:
                last_validate = now
                try:
                    await self._validate(self._client)
                except _NETWORK_ERRORS as exc:
                    await self._mark_down_and_drop(exc)
            await asyncio.sleep(self._probe_interval_s)

    async def _read_forever(self) -> None:
        backoff = 0.05
        while not self._closing:
            client = self._new_client(single=True, read_timeout_s=self._block_ms / 1000 + self._op_timeout_s)
            try:
                await self._read(client)
            except _NETWORK_ERRORS as exc:
                if self._restart_requested:
                    self._restart_requested = False  # a deaf reader: Redis itself may be fine
                else:
                    if self._reader_connected:
                        log.warning("redis reader disconnected", extra={"node_id": self.node_id})
                    self._mark_down(exc)
            finally:
                self._reader_connected = False
                self._read_deadline = None
                try:
                    async with asyncio.timeout(self._op_timeout_s):
                        await client.aclose()
                except _NETWORK_ERRORS:
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
            if self._up:
                backoff = 0.05

    async def _read(self, client: Redis) -> None:
        """One reader connection: revalidate every channel, then XREAD until the connection fails."""
        async with asyncio.timeout(self._op_timeout_s + self._connect_timeout_s):
            probe_id = await _last_id(client, self._probe_key)
            self._probe_seen = self._probe_seq  # probes sent before this connection cannot be read by it
            await self._validate(client)
        self._reader_connected = True
        self._mark_up()
        while not self._closing:
            streams: dict[Any, Any] = {self._probe_key: probe_id}
            for channel, state in self._channels.items():
                streams[channel_log_key(self._prefix, channel)] = f"{state.offset}-0"
            async with asyncio.timeout(self._block_ms / 1000 + self._op_timeout_s) as deadline:
                self._read_deadline = deadline
                reply = await client.xread(streams, count=self._read_count, block=self._block_ms)
            self._read_deadline = None
            for raw_key, entries in reply or []:
                key = _text(raw_key)
                if key == self._probe_key:
                    for entry_id, fields in entries:
                        probe_id = entry_id
                        seq = int(fields.get(b"n", b"0"))
                        self._probe_seen = max(self._probe_seen, seq)
                    continue
                channel = parse_channel_log_key(self._prefix, key)
                if channel is not None:
                    self._deliver(channel, entries)
            await asyncio.sleep(0)  # let publishers run between large batches

    async def _validate(self, client: Redis) -> None:
        """Check every subscribed channel's meta against what was delivered; reset on a loss."""
        channels = list(self._channels)
        if not channels:
            return
        async with client.pipeline(transaction=False) as pipe:
            for channel in channels:
                meta = channel_meta_key(self._prefix, channel)
                pipe.hmget(meta, "epoch", "offset")
                pipe.pexpire(meta, self._meta_ttl_ms)
            async with asyncio.timeout(self._op_timeout_s):
                replies = await pipe.execute()
        for channel, (epoch_raw, offset_raw) in zip(channels, replies[::2], strict=True):
            state = self._channels.get(channel)
            if state is None:
                continue
            epoch = _text(epoch_raw) if epoch_raw is not None else None
            offset = int(offset_raw) if offset_raw is not None else 0
            if epoch == state.epoch and offset >= state.offset:
                continue
            keys = [channel_meta_key(self._prefix, channel), channel_log_key(self._prefix, channel)]
            args = [_new_epoch(), self._meta_ttl_ms, state.epoch, state.offset]
            async with asyncio.timeout(self._op_timeout_s):
                new_offset, new_epoch = await self._ensure_script(keys=keys, args=args, client=client)
            if _text(new_epoch) == state.epoch and int(new_offset) >= state.offset:
                continue  # it caught up meanwhile
            self._reset(channel, state, StreamPosition(int(new_offset), _text(new_epoch)))

    def _reset(self, channel: str, state: _Channel, position: StreamPosition) -> None:
        log.warning(
            "channel history lost, subscribers reset",
            extra={"channel": channel, "node_id": self.node_id, "offset": state.offset},
        )
        state.epoch, state.offset = position.epoch, position.offset
        if state.on_reset is not None:
            try:
                state.on_reset(channel, position)
            except Exception:
                log.exception("reset handler failed", extra={"channel": channel})

    def _deliver(self, channel: str, entries: list[Any]) -> None:
        for entry in entries:
            state = self._channels.get(channel)
            if state is None:
                return
            fields = entry[1]
            epoch = _text(fields.get(b"e", b""))
            offset = _offset(entry[0])
            if epoch != state.epoch:
                self._reset(channel, state, StreamPosition(offset - 1, epoch))
            elif offset <= state.offset:
                continue  # already delivered
            elif offset != state.offset + 1 and not state.ephemeral:
                self._reset(channel, state, StreamPosition(offset - 1, epoch))  # trimmed while behind
            state.offset = offset
            publication = _publication(channel, entry, epoch)
            try:
                state.handler(publication)
            except Exception:
                log.exception("publication handler failed", extra={"channel": channel})


async def _last_id(client: Redis, key: str) -> bytes | str:
    last = await client.xrevrange(key, count=1)
    return last[0][0] if last else "0-0"


def _publication(channel: str, entry: Any, epoch: str) -> Publication:
    entry_id, fields = entry
    if isinstance(fields, list):  # from a script: a flat field/value list
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    publisher = fields.get(b"u") or None
    return Publication(
        channel,
        _offset(entry_id),
        epoch,
        fields.get(b"p", b""),
        _text(publisher) if publisher else None,
        int(fields.get(b"t", b"0")) / 1000,
    )


def _offset(entry_id: bytes | str) -> int:
    text = _text(entry_id)
    return int(text.split("-", 1)[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _new_epoch() -> str:
    return secrets.token_hex(4)


if TYPE_CHECKING:
    from .broker import Broker

    def _conforms(broker: RedisBroker) -> Broker:
        return broker
