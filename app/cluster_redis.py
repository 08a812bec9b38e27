"""The Redis kind of ``Cluster``: cluster-wide presence, parked sessions, connection and rate limits.

Keys come from ``crdt/keys.py``. Every command runs under ``redis_timeout_s`` without retries; after a
failure the services stop calling Redis for ``_BACKOFF_S`` and fall back to what this node knows
(documented per class), so a Redis outage never blocks or closes a connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from crdt.broker import StreamPosition
from crdt.broker_redis import RedisBroker
from crdt.keys import (
    connections_key,
    live_session_key,
    node_probe_key,
    parse_presence_member,
    presence_key,
    presence_member,
    rate_key,
    session_key,
)

from .cluster import Cluster
from .config import Settings
from .limits import LocalConnectionLimiter, LocalRateLimiter
from .presence import LocalPresence, PresenceEvent
from .session import UNKNOWN_POSITION, SessionState

log = logging.getLogger(__name__)

_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)
_BACKOFF_S = 1.0
_ACTIVE_S = 5.0  # a user's rate is settled in Redis until this long after its last message
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer (or is in its back-off after a failure)."""


class _Redis:
    """One client for the app-level services, with a timeout per call and a short back-off after failures."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._timeout_s = timeout_s
        self._down_until = 0.0
        self._stale = False

    async def __call__(self, awaitable: Awaitable[T]) -> T:
        """Await one command; raises ``RedisUnavailable`` fast while Redis is known to be down."""
        if time.monotonic() < self._down_until:
            if hasattr(awaitable, "close"):
                awaitable.close()
            raise RedisUnavailable("redis is unavailable")
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._stale:  # after an outage: no pooled connection to the old server is reused
                    self._stale = False
                    await self.client.connection_pool.disconnect()
                return await awaitable
        except _NETWORK_ERRORS as exc:
            self._down_until = time.monotonic() + _BACKOFF_S
            self._stale = True
            raise RedisUnavailable(type(exc).__name__) from exc

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.client.aclose()
        except _NETWORK_ERRORS:
            pass


# -- sessions ----------------------------------------------------------------------------------------------

# KEYS: session. ARGV: user id. The parked state if it belongs to that user, removed atomically.
_TAKE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
if cjson.decode(raw)['user'] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return raw
"""


# KEYS: live session, holder's probe stream. ARGV: user, holder, dead after (ms). The live record,
# removed, if it still names that user and holder and the holder's last probe is older than that.
_CLAIM = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local data = cjson.decode(raw)
if data['user'] ~= ARGV[1] or data['node'] ~= ARGV[2] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local stamp = tonumber(string.match(last[1][1], '^(%d+)'))
  if now - stamp < tonumber(ARGV[3]) then return false end
end
redis.call('DEL', KEYS[1])
return raw
"""


class RedisSessionRegistry:
    """Parked sessions as Redis strings with the session TTL, so any node can take one over.

    ``take`` is one script (check the owner, delete, return), so two nodes never both resume a session.
    While Redis is down, ``park`` loses the session (it cannot be resumed; the client gets
    ``resumed: false`` and reloads) and ``take`` finds nothing.
    """

    def __init__(self, redis: _Redis, *, prefix: str, ttl_s: float, node_dead_after_s: float = 5.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = int(ttl_s * 1000)
        self._dead_ms = int(node_dead_after_s * 1000)
        self._take = redis.client.register_script(_TAKE)
        self._claim = redis.client.register_script(_CLAIM)

    async def park(self, state: SessionState) -> None:
        """See ``SessionRegistry.park``."""
        raw = json.dumps(
            {
                "user": state.user_id,
                "channels": {name: [p.offset, p.epoch] for name, p in state.channels.items()},
                "detached_at": state.detached_at,
            }
        )
        try:
            await self._redis(
                self._redis.client.set(session_key(self._prefix, state.session_id), raw, px=self._ttl_ms)
            )
        except RedisUnavailable:
            log.warning("session not parked: redis unavailable", extra={"session_id": state.session_id})

    async def take(self, session_id: str, user_id: str) -> SessionState | None:
        """See ``SessionRegistry.take``."""
        try:
            raw = await self._redis(self._take(keys=[session_key(self._prefix, session_id)], args=[user_id]))
        except RedisUnavailable:
            log.warning("session not resumable: redis unavailable", extra={"session_id": session_id})
            return None
        if not raw:
            return None
        data = json.loads(raw)
        channels = {
            name: StreamPosition(int(offset), str(epoch))
            for name, (offset, epoch) in data["channels"].items()
        }
        return SessionState(session_id, user_id, channels, float(data["detached_at"]))

    async def mark_live(
        self, session_id: str, user_id: str, node_id: str, channels: Iterable[str] = ()
    ) -> None:
        """See ``SessionRegistry.mark_live`` (kept a day at most)."""
        raw = json.dumps({"user": user_id, "node": node_id, "channels": sorted(channels)})
        try:
            await self._redis(
                self._redis.client.set(live_session_key(self._prefix, session_id), raw, ex=86400)
            )
        except RedisUnavailable:
            pass  # a resume on another node cannot take this session over; it can once it is parked

    async def mark_gone(self, session_id: str) -> None:
        """See ``SessionRegistry.mark_gone``."""
        try:
            await self._redis(self._redis.client.delete(live_session_key(self._prefix, session_id)))
        except RedisUnavailable:
            pass

    async def live_owner(self, session_id: str, user_id: str) -> str | None:
        """See ``SessionRegistry.live_owner``."""
        try:
            raw = await self._redis(self._redis.client.get(live_session_key(self._prefix, session_id)))
        except RedisUnavailable:
            return None
        if not raw:
            return None
        data = json.loads(raw)
        return str(data["node"]) if data.get("user") == user_id else None

    async def claim_orphan(self, session_id: str, user_id: str) -> SessionState | None:
        """See ``SessionRegistry.claim_orphan``: the holder is dead when its probe stream (the broker
        adds an entry every probe interval) has had no entry for ``node_dead_after_s``."""
        key = live_session_key(self._prefix, session_id)
        try:
            raw = await self._redis(self._redis.client.get(key))
            if not raw:
                return None
            data = json.loads(raw)
            if data.get("user") != user_id:
                return None
            probe = node_probe_key(self._prefix, str(data["node"]))
            raw = await self._redis(
                self._claim(keys=[key, probe], args=[user_id, str(data["node"]), self._dead_ms])
            )
        except RedisUnavailable:
            return None
        if not raw:
            return None
        channels = {name: UNKNOWN_POSITION for name in json.loads(raw).get("channels", [])}
        log.info("session of a dead node claimed", extra={"session_id": session_id, "node_id": data["node"]})
        return SessionState(session_id, user_id, channels, time.time())


# -- connection limit ---------------------------------------------------------------------------------------

# KEYS: connections. ARGV: node, this node's count after acquiring, max, lease ms. Fields are
# ``node -> count:expiry_ms``; expired fields (a dead node's) are dropped and not counted.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then
    local count, expiry = string.match(fields[i + 1], '^(%d+):(%d+)$')
    if count and tonumber(expiry) > now then
      total = total + tonumber(count)
    else
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
end
if total + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: connections. ARGV: node, count, lease ms. Sets (or with count 0 removes) this node's field.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[3])))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class RedisConnectionLimiter:
    """A user's connections over all nodes: per user a hash of per-node counts with a lease.

    Each node writes only its own field (its local count, which it knows exactly) and renews the
    lease of its fields every ``lease_s / 3``; a node that dies stops renewing, and its connections
    stop counting after ``lease_s``. While Redis is down the cap holds per node only (fail open).
    """

    def __init__(
        self, redis: _Redis, *, prefix: str, node_id: str, max_per_user: int, lease_s: float
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._node_id = node_id
        self._max = max_per_user
        self._lease_ms = int(lease_s * 1000)
        self._local = LocalConnectionLimiter(max_per_user)
        self._counts: dict[str, int] = {}
        self._acquire = redis.client.register_script(_ACQUIRE)
        self._lease = redis.client.register_script(_LEASE)

    async def acquire(self, user_id: str) -> bool:
        """See ``ConnectionLimiter.acquire``."""
        if not await self._local.acquire(user_id):
            return False
        count = self._counts.get(user_id, 0) + 1
        self._counts[user_id] = count
        key = connections_key(self._prefix, user_id)
        try:
            ok = await self._redis(
                self._acquire(keys=[key], args=[self._node_id, count, self._max, self._lease_ms])
            )
        except RedisUnavailable:
            return True  # fail open: the per-node cap still holds
        if not ok:
            await self.release(user_id)
            return False
        return True

    async def release(self, user_id: str) -> int:
        """See ``ConnectionLimiter.release``."""
        left = await self._local.release(user_id)
        if left:
            self._counts[user_id] = left
        else:
            self._counts.pop(user_id, None)
        try:
            await self._redis(
                self._lease(
                    keys=[connections_key(self._prefix, user_id)], args=[self._node_id, left, self._lease_ms]
                )
            )
        except RedisUnavailable:
            pass  # the lease renewal writes the right count once Redis is back
        return left

    async def renew(self) -> None:
        """Write this node's counts again with a fresh lease (called every ``lease_s / 3``)."""
        if not self._counts:
            return
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for user_id, count in self._counts.items():
                await self._lease(
                    keys=[connections_key(self._prefix, user_id)],
                    args=[self._node_id, count, self._lease_ms],
                    client=pipe,
                )
            await self._redis(pipe.execute())


# -- rate limit ----------------------------------------------------------------------------------------------

# KEYS: bucket. ARGV: tokens used since the last call, rate per s, burst. Refills by Redis time, takes
# the used tokens (the bucket may go into debt down to -burst) and returns what is left.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate / 1000)
tokens = math.max(-burst, tokens - tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(tokens)
"""


class RedisRateLimiter:
    """A token bucket per user shared by all nodes, with a local bucket in front of it.

    ``allow`` never waits: it spends from this node's bucket (a ``LocalRateLimiter``). Every
    ``sync_s`` the node settles what its users spent in the shared bucket (one script per user, in a
    pipeline) and caps their local buckets at what is left there, so the users' total rate over all
    nodes stays near ``rate_per_s`` (overshoot bounded by one sync interval per node). While Redis
    is down each node enforces the limit on its own (fail open to the per-node rate).
    """

    def __init__(self, redis: _Redis, *, prefix: str, rate_per_s: float, burst: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._rate = rate_per_s
        self._burst = burst
        self._local = LocalRateLimiter(rate_per_s, burst)
        self._spent: dict[str, int] = {}
        self._active: dict[str, float] = {}  # user -> when it last spent (its bucket is kept in step)
        self._settle = redis.client.register_script(_SETTLE)

    def allow(self, user_id: str) -> bool:
        """See ``RateLimiter.allow``."""
        if not self._local.allow(user_id):
            self._active[user_id] = time.monotonic()
            return False
        self._spent[user_id] = self._spent.get(user_id, 0) + 1
        return True

    def forget(self, user_id: str) -> None:
        """See ``RateLimiter.forget``."""
        if user_id not in self._spent:
            self._local.forget(user_id)
            self._active.pop(user_id, None)

    async def sync(self) -> None:
        """Settle the tokens spent since the last call in the shared buckets (called every ``sync_s``)."""
        now = time.monotonic()
        for user_id in self._spent:
            self._active[user_id] = now
        for user_id in [u for u, t in self._active.items() if now - t > _ACTIVE_S]:
            del self._active[user_id]
        if not self._active:
            return
        spent, self._spent = self._spent, {}
        users = list(self._active)  # also users who spent nothing: their local refill is capped too
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for user_id in users:
                    await self._settle(
                        keys=[rate_key(self._prefix, user_id)],
                        args=[spent.get(user_id, 0), self._rate, self._burst],
                        client=pipe,
                    )
                left = await self._redis(pipe.execute())
        except RedisUnavailable:
            return  # fail open: the local buckets alone limit each node
        for user_id, tokens in zip(users, left, strict=True):
            self._local.cap(user_id, float(tokens))


# -- presence ------------------------------------------------------------------------------------------------


class RedisPresence(LocalPresence):
    """``Presence`` over all nodes: this node's participants kept by ``LocalPresence``, the others'
    read from Redis.

    Per canvas a sorted set of ``node/user/name`` members scored by lease expiry (ms). This node
    writes its participants (and removes the ones who left) at once after a change, and renews them
    every ``lease_s / 3``; it reads the other nodes' participants at the same time and when a
    session is seated (``refresh``). ``join``/``leave`` events are announced only when the user is on
    no other node either; a dead node's participants drop out of counts after ``lease_s`` (without a
    ``leave`` event). Idle/active state is per node. While Redis is down the counts are this node's
    plus the last known others.
    """

    def __init__(
        self, redis: _Redis, *, prefix: str, node_id: str, idle_after_s: float, lease_s: float
    ) -> None:
        super().__init__(idle_after_s)
        self._redis = redis
        self._prefix = prefix
        self._node_id = node_id
        self._lease_ms = int(lease_s * 1000)
        self._remote: dict[str, dict[str, str]] = {}  # canvas -> other nodes' users -> name
        self._written: dict[str, set[str]] = {}  # canvas -> members this node has in Redis
        self._dirty: set[str] = set()
        self._refreshing: set[str] = set()  # canvases being read before a join: keep their others
        self.changed = asyncio.Event()

    def join(self, canvas_id: str, user_id: str, user_name: str, connection: str) -> PresenceEvent | None:
        """See ``Presence.join``."""
        event = super().join(canvas_id, user_id, user_name, connection)
        self._touched(canvas_id)
        if event is None or user_id in self._remote.get(canvas_id, {}):
            return None
        return PresenceEvent(canvas_id, "join", user_id, user_name, self.count(canvas_id))

    def leave(self, canvas_id: str, user_id: str, connection: str) -> PresenceEvent | None:
        """See ``Presence.leave``."""
        event = super().leave(canvas_id, user_id, connection)
        self._touched(canvas_id)
        if event is None or user_id in self._remote.get(canvas_id, {}):
            return None
        return PresenceEvent(canvas_id, "leave", user_id, event.user_name, self.count(canvas_id))

    def count(self, canvas_id: str) -> int:
        """See ``Presence.count``: distinct users on every node."""
        local = self._canvases.get(canvas_id, {})
        remote = self._remote.get(canvas_id, {})
        return len(local) + sum(1 for user in remote if user not in local)

    def is_present(self, canvas_id: str, user_id: str) -> bool:
        return super().is_present(canvas_id, user_id) or user_id in self._remote.get(canvas_id, {})

    async def refresh(self, canvas_id: str) -> None:
        """Write this node's participants of ``canvas_id`` and read the others' (one round trip)."""
        self._refreshing.add(canvas_id)
        try:
            await self._sync([canvas_id])
        except RedisUnavailable:
            pass
        finally:
            self._refreshing.discard(canvas_id)

    async def renew(self) -> None:
        """Sync every canvas this node has participants on, or changed since the last call."""
        canvases = sorted(set(self._canvases) | set(self._written) | self._dirty)
        self._dirty.clear()
        if canvases:
            await self._sync(canvases)

    def _touched(self, canvas_id: str) -> None:
        self._dirty.add(canvas_id)
        self.changed.set()

    async def _sync(self, canvases: list[str]) -> None:
        now_ms = int(time.time() * 1000)
        expiry = now_ms + self._lease_ms
        plans: list[tuple[str, set[str]]] = []
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for canvas_id in canvases:
                key = presence_key(self._prefix, canvas_id)
                users = self._canvases.get(canvas_id, {})
                members = {presence_member(uid, self._node_id, p.name) for uid, p in users.items()}
                gone = self._written.get(canvas_id, set()) - members
                if gone:
                    pipe.zrem(key, *gone)
                if members:
                    pipe.zadd(key, dict.fromkeys(members, expiry))
                    pipe.pexpire(key, self._lease_ms * 2)
                pipe.zremrangebyscore(key, "-inf", now_ms)
                pipe.zrangebyscore(key, now_ms, "+inf")
                plans.append((canvas_id, members))
            replies = await self._redis(pipe.execute())
        read = [reply for reply in replies if isinstance(reply, list)]
        for (canvas_id, members), raw_members in zip(plans, read, strict=True):
            if members:
                self._written[canvas_id] = members
            else:
                self._written.pop(canvas_id, None)
            others: dict[str, str] = {}
            for raw in raw_members:
                parsed = parse_presence_member(raw.decode())
                if parsed is not None and parsed[1] != self._node_id:
                    others[parsed[0]] = parsed[2]
            if others and (canvas_id in self._canvases or canvas_id in self._refreshing):
                self._remote[canvas_id] = others
            else:
                self._remote.pop(canvas_id, None)


# -- the bundle ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def redis_cluster(settings: Settings) -> AsyncIterator[Cluster]:
    """The Redis kind of ``Cluster``, with its background work (broker reader and monitor, presence
    and connection lease renewal, rate settling); all of it stops when the context exits.

    Starts even while Redis is down (the node serves its local clients and catches up when it returns).
    """
    if settings.redis_url is None:
        raise ValueError("redis_cluster needs Settings.redis_url")
    async with AsyncExitStack() as stack:
        broker = await stack.enter_async_context(
            RedisBroker(
                settings.redis_url,
                node_id=settings.node_id,
                prefix=settings.redis_prefix,
                history_ttl_s=settings.history_ttl_s,
                history_max=settings.history_max_per_channel,
                meta_ttl_s=max(2 * settings.history_ttl_s, settings.session_ttl_s),
                op_timeout_s=settings.redis_timeout_s,
                connect_timeout_s=settings.redis_timeout_s,
                probe_interval_s=settings.redis_probe_interval_s,
                probe_deadline_s=settings.redis_probe_deadline_s,
            )
        )
        redis = _Redis(settings.redis_url, settings.redis_timeout_s)
        stack.push_async_callback(redis.close)
        prefix = settings.redis_prefix
        presence = RedisPresence(
            redis,
            prefix=prefix,
            node_id=settings.node_id,
            idle_after_s=settings.presence_idle_after_s,
            lease_s=settings.presence_lease_s,
        )
        connections = RedisConnectionLimiter(
            redis,
            prefix=prefix,
            node_id=settings.node_id,
            max_per_user=settings.max_connections_per_user,
            lease_s=settings.presence_lease_s,
        )
        rate = RedisRateLimiter(
            redis, prefix=prefix, rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst
        )

        async def checks() -> dict[str, str]:
            return {"redis": "ok" if broker.healthy else "unavailable"}

        tasks = [
            asyncio.create_task(_every(settings.rate_limit_sync_s, rate.sync), name="rate-sync"),
            asyncio.create_task(_every(settings.presence_lease_s / 3, connections.renew), name="conn-lease"),
            asyncio.create_task(
                _presence_loop(presence, settings.presence_lease_s / 3), name="presence-sync"
            ),
        ]
        try:
            yield Cluster(
                broker=broker,
                presence=presence,
                sessions=RedisSessionRegistry(
                    redis,
                    prefix=prefix,
                    ttl_s=settings.session_ttl_s,
                    node_dead_after_s=settings.redis_probe_deadline_s + settings.redis_probe_interval_s,
                ),
                rate=rate,
                connections=connections,
                checks=checks,
            )
        finally:
            pending = set(tasks)
            while pending:
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.5)


async def _every(interval_s: float, work: Any) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await work()
        except RedisUnavailable:
            pass
        except Exception:
            log.exception("cluster background work failed")


async def _presence_loop(presence: RedisPresence, interval_s: float) -> None:
    """Sync presence soon after a change (50 ms debounce), and at least every ``interval_s``."""
    while True:
        waited = 0.0
        while waited < interval_s and not presence.changed.is_set():
            await asyncio.sleep(0.05)
            waited += 0.05
        presence.changed.clear()
        try:
            await presence.renew()
        except RedisUnavailable:
            pass
        except Exception:
            log.exception("presence sync failed")
