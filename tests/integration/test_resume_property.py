"""Property: resumption replays exactly what was missed, or refuses -- never a partial or doubled replay.

A Hypothesis state machine drives one channel through publish / disconnect / resume / trim (bursts
beyond ``history_max``) / history loss (Redis only), on the real ``Hub`` and ``Subscription`` (the
gateway's subscribe-with-``since`` path) over ``InMemoryBroker`` and over ``RedisBroker`` on a real
Redis. Each connection must receive consecutive offsets from where it started, without gaps or
duplicates; a resume is refused only when the model says publications after the position are gone.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.hub import Hub, Subscription, to_delivery
from crdt.broker import HistoryUnavailable, StreamPosition
from crdt.broker_memory import InMemoryBroker
from crdt.broker_redis import RedisBroker
from crdt.keys import channel_meta_key

pytestmark = pytest.mark.integration

CHANNEL = "canvas:prop"
HISTORY_MAX = 6


class Receiver:
    def __init__(self) -> None:
        self.session_id = f"sess_{secrets.token_hex(4)}"
        self.offsets: list[int | None] = []

    def send_delivery(self, delivery: Any) -> None:
        self.offsets.append(delivery.offset)


def machine(kind: str, redis_url: str | None) -> type[RuleBasedStateMachine]:
    class Resumption(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.prefix = f"p{secrets.token_hex(4)}"
            if kind == "memory":
                self.broker: Any = InMemoryBroker(history_max=HISTORY_MAX)
            else:
                assert redis_url is not None
                self.broker = RedisBroker(
                    redis_url, node_id="prop", prefix=self.prefix, history_max=HISTORY_MAX, block_s=0.2
                )
                self.run(self.broker.__aenter__())
            self.hub = Hub(self.broker)
            self.last = 0  # model: last offset published in the current epoch
            self.epoch_lost = False  # model: history was lost since the client's position was taken
            self.subscription: Subscription | None = None
            self.receiver: Receiver | None = None
            self.start = 0
            self.position: StreamPosition | None = None  # where the disconnected client stands
            self.connect(None)

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(asyncio.wait_for(coro, 10))

        def connect(self, since: StreamPosition | None) -> bool:
            """The gateway's subscribe: add, replay history after ``since``, then go live."""
            receiver = Receiver()
            subscription = Subscription(CHANNEL, receiver)
            position = self.run(self.hub.add(subscription))
            replay = []
            if since is not None:
                try:
                    replay = self.run(self.broker.history(CHANNEL, since))
                except HistoryUnavailable:
                    self.run(self.hub.remove(subscription))
                    return False
                subscription.start_at(since)
            else:
                subscription.start_at(position)
            self.start = subscription.offset
            subscription.go_live([to_delivery(p) for p in replay])
            self.subscription, self.receiver = subscription, receiver
            return True

        def settle(self) -> None:
            """Wait until the live connection has everything published (Redis delivers asynchronously)."""
            if self.subscription is None or self.receiver is None:
                return

            async def caught_up() -> None:
                while self.subscription is not None and self.subscription.offset < self.last:
                    await asyncio.sleep(0.005)

            self.run(caught_up())

        @rule(count=st.integers(min_value=1, max_value=HISTORY_MAX + 2))
        def publish(self, count: int) -> None:
            for _ in range(count):
                publication = self.run(self.broker.publish(CHANNEL, b"{}", publisher="other"))
                if publication.offset == 1 and self.last != 0:
                    self.epoch_lost = True  # a new epoch began (history lost)
                self.last = publication.offset

        @precondition(lambda self: self.subscription is not None)
        @rule()
        def disconnect(self) -> None:
            self.settle()
            assert self.subscription is not None
            self.position = self.subscription.position
            self.run(self.hub.remove(self.subscription))
            self.subscription = self.receiver = None
            self.epoch_lost = False

        @precondition(lambda self: self.subscription is None and self.position is not None)
        @rule()
        def resume(self) -> None:
            assert self.position is not None
            since = self.position
            first_kept = max(1, self.last - HISTORY_MAX + 1)
            must_refuse = self.epoch_lost or since.offset + 1 < first_kept
            resumed = self.connect(since)
            if must_refuse:
                assert not resumed, f"replayed from {since.offset} though {first_kept} is the oldest kept"
                self.connect(None)  # the client reloads and subscribes afresh
            else:
                assert resumed, f"refused from {since.offset}; history holds {first_kept}..{self.last}"
            self.position = None

        @precondition(lambda self: kind == "redis" and self.subscription is None)
        @rule()
        def lose_history(self) -> None:
            """Redis loses the channel (a restart without persistence, an eviction)."""
            assert isinstance(self.broker, RedisBroker)
            self.run(self.broker._client.delete(channel_meta_key(self.prefix, CHANNEL)))
            self.epoch_lost = True
            self.last = 0

        @invariant()
        def exact_on_every_connection(self) -> None:
            if self.receiver is None:
                return
            self.settle()
            offsets = self.receiver.offsets
            assert offsets == list(range(self.start + 1, self.start + 1 + len(offsets))), offsets
            assert self.subscription is not None and self.subscription.offset == self.last

        def teardown(self) -> None:
            if isinstance(self.broker, RedisBroker):
                self.run(self.broker.__aexit__(None, None, None))
            self.loop.close()

    return Resumption


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_resume_replays_exactly_or_refuses(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    run_state_machine_as_test(
        machine(kind, url),
        settings=settings(
            max_examples=60 if kind == "memory" else 30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
