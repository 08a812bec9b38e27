"""What a node shares with the other nodes: the broker, presence, parked sessions and per-user limits.

``Cluster`` bundles them behind their interfaces; ``local_cluster`` is the single-node kind (all in
process). ``app/cluster_redis.py`` builds the Redis kind. Only the lifespan in ``app/main.py`` chooses
(by ``Settings.redis_url``); everything else sees the interfaces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from crdt.broker import Broker
from crdt.broker_memory import InMemoryBroker

from .config import Settings
from .limits import ConnectionLimiter, LocalConnectionLimiter, LocalRateLimiter, RateLimiter
from .presence import LocalPresence, Presence
from .session import LocalSessionRegistry, SessionRegistry


async def _no_checks() -> dict[str, str]:
    return {}


@dataclass(slots=True)
class Cluster:
    """The shared services of one node.

    Attributes:
        broker: channel streams.
        presence: who is on which canvas.
        sessions: parked sessions, resumable on any node that shares them.
        rate: per-user message rate.
        connections: per-user connection count.
        checks: readiness of the shared backends (``{"redis": "ok"}``), for ``/readyz``.
    """

    broker: Broker
    presence: Presence
    sessions: SessionRegistry
    rate: RateLimiter
    connections: ConnectionLimiter
    checks: Callable[[], Awaitable[dict[str, str]]] = _no_checks


def local_cluster(settings: Settings) -> Cluster:
    """The single-node kind: everything in this process."""
    return Cluster(
        broker=InMemoryBroker(
            history_ttl_s=settings.history_ttl_s, history_max=settings.history_max_per_channel
        ),
        presence=LocalPresence(settings.presence_idle_after_s),
        sessions=LocalSessionRegistry(settings.session_ttl_s),
        rate=LocalRateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        connections=LocalConnectionLimiter(settings.max_connections_per_user),
    )
