"""Per-user limits of the JSON protocol: message rate (token bucket) and open connections.

Node-local implementations behind small interfaces; the cluster-wide (Redis) ones are in
``app/cluster_redis.py``. No sockets here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RateLimiter(Protocol):
    """Admits or refuses one message of a user; called for every inbound frame, so never waits."""

    def allow(self, user_id: str) -> bool:
        """Take one token from ``user_id``'s bucket; False when it is empty (drop the message)."""
        ...

    def forget(self, user_id: str) -> None:
        """The user has no connection left on this node: drop its state once that loses nothing."""
        ...


class ConnectionLimiter(Protocol):
    """Counts a user's open connections against a cap."""

    async def acquire(self, user_id: str) -> bool:
        """Count one more connection of ``user_id``; False (and nothing counted) when at the cap."""
        ...

    async def release(self, user_id: str) -> int:
        """Count one connection of ``user_id`` fewer; returns how many are left."""
        ...


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class LocalRateLimiter:
    """Token buckets per user on this node: ``burst`` tokens, refilled at ``rate_per_s``.

    Args:
        rate_per_s: sustained messages per second per user (over all the user's connections).
        burst: bucket size, i.e. the most messages accepted at once after a quiet period.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = 0.0

    def allow(self, user_id: str) -> bool:
        """See ``RateLimiter.allow``."""
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def cap(self, user_id: str, tokens: float) -> None:
        """Lower ``user_id``'s bucket to at most ``tokens`` (what a shared bucket says is left)."""
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(self._burst, self._clock())
        bucket.tokens = min(bucket.tokens, tokens)

    def forget(self, user_id: str) -> None:
        """See ``RateLimiter.forget``: only a full bucket is dropped, so reconnecting refills nothing.

        Buckets of users who left while partly drained are swept once they have refilled, at most
        once per refill period, so the table stays bounded by the users active in that period.
        """
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is not None and self._refilled(bucket, now):
            del self._buckets[user_id]
        if now >= self._next_sweep:
            self._next_sweep = now + self._burst / self._rate
            for stale in [uid for uid, b in self._buckets.items() if self._refilled(b, now)]:
                del self._buckets[stale]  # full buckets are the default: forgetting them changes nothing

    def _refilled(self, bucket: _Bucket, now: float) -> bool:
        return bucket.tokens + (now - bucket.stamp) * self._rate >= self._burst


class LocalConnectionLimiter:
    """Open connections per user on this node, capped at ``max_per_user``."""

    def __init__(self, max_per_user: int) -> None:
        self._max = max_per_user
        self._open: dict[str, int] = {}

    async def acquire(self, user_id: str) -> bool:
        """See ``ConnectionLimiter.acquire``."""
        count = self._open.get(user_id, 0)
        if count >= self._max:
            return False
        self._open[user_id] = count + 1
        return True

    async def release(self, user_id: str) -> int:
        """See ``ConnectionLimiter.release``."""
        count = self._open.get(user_id, 0) - 1
        if count <= 0:
            self._open.pop(user_id, None)
            return 0
        self._open[user_id] = count
        return count


class Strikes:
    """A decaying count of refused messages on one connection: persistent flooding closes it (4008).

    Each refusal adds one; the count decays by ``decay_per_s`` per second. ``hit`` returns True
    once the count exceeds ``limit``.
    """

    __slots__ = ("_clock", "_count", "_decay", "_limit", "_stamp")

    def __init__(
        self, limit: float, decay_per_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._decay = decay_per_s
        self._clock = clock
        self._count = 0.0
        self._stamp = clock()

    def hit(self) -> bool:
        now = self._clock()
        self._count = max(0.0, self._count - (now - self._stamp) * self._decay) + 1.0
        self._stamp = now
        return self._count > self._limit
