"""Token bucket per user, the decaying strike count, connection counting, and presence bookkeeping."""

from __future__ import annotations

from app.limits import LocalConnectionLimiter, LocalRateLimiter, Strikes
from app.presence import LocalPresence


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_and_reconnecting_does_not() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(10, 10, clock=clock)
    assert all(limiter.allow("u") for _ in range(10))
    assert not limiter.allow("u") and limiter.allow("v")
    limiter.forget("u")  # the user disconnected with an empty bucket: it stays empty
    assert not limiter.allow("u")
    clock.now += 0.5
    assert sum(limiter.allow("u") for _ in range(10)) == 5


def test_strikes_decay() -> None:
    clock = Clock()
    strikes = Strikes(limit=3, decay_per_s=10, clock=clock)
    assert not any(strikes.hit() for _ in range(3))
    assert strikes.hit()
    clock.now += 1
    assert not strikes.hit()


async def test_connection_limit() -> None:
    limiter = LocalConnectionLimiter(2)
    assert await limiter.acquire("u") and await limiter.acquire("u")
    assert not await limiter.acquire("u")
    assert await limiter.release("u") == 1 and await limiter.acquire("u")


def test_presence_counts_users_not_connections() -> None:
    clock = Clock()
    presence = LocalPresence(idle_after_s=5, clock=clock)
    assert presence.join("c", "u", "U", "sess_1").event == "join"
    assert presence.join("c", "u", "U", "p_1") is None and presence.count("c") == 1
    clock.now += 6
    assert [e.event for e in presence.sweep()] == ["idle"] and presence.state("c", "u") == "idle"
    assert presence.touch("c", "u").event == "active"
    assert presence.leave("c", "u", "sess_1") is None
    assert presence.leave("c", "u", "p_1").event == "leave" and presence.count("c") == 0


def test_buckets_of_users_who_left_are_swept_once_refilled() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(10, 10, clock=clock)
    for i in range(1000):  # each sends a little and disconnects within the same second
        user = f"u{i}"
        assert limiter.allow(user)
        limiter.forget(user)
    clock.now += 1.1  # one refill period (burst / rate = 1 s) later
    limiter.allow("late")
    limiter.forget("late")
    assert len(limiter._buckets) <= 1
