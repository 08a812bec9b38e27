"""The JSON channel protocol's node services and the operations that span them.

``Gateway`` composes the broker, the node-local hub, the ordered publisher, presence, limits, the
session registry, the Yjs bridge and the assistant, and implements subscribe / unsubscribe / resume /
detach on a ``Session``. The WebSocket adapter is ``app/json_ws.py``; message parsing is ``app/handlers.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from crdt.broker import (
    Broker,
    BrokerUnavailable,
    HistoryUnavailable,
    Publication,
    StreamPosition,
    is_ephemeral,
)
from crdt.keys import control_channel
from crdt.persist import UpdateLog
from crdt.room import RoomManager

from .assistant import Assistant, UnavailableAssistant
from .auth import Authenticator
from .bridge import SERVER_SESSION, Bridge
from .channels import Channel, authorize_subscribe, parse_channel
from .cluster import Cluster
from .codec import server_message
from .config import Settings
from .errors import SessionTakenOver, SubscriptionFailed
from .hub import Hub, Publisher, Subscription, to_delivery
from .session import Seat, Session, SessionState, new_trace_id

log = logging.getLogger(__name__)

_TAKEOVER_WAIT_S = 2.5  # how long a resume waits for another node to park the session it asked for


@dataclass(frozen=True, slots=True)
class Since:
    """Where a client's copy of a channel stands (``options.since`` or a ``resume`` offset)."""

    offset: int
    epoch: str | None = None


class Gateway:
    """One node's JSON-protocol services. Use as an async context manager (owns background tasks).

    Args:
        settings: limits and timings.
        auth: verifies refreshed tokens.
        rooms: the node's rooms (the bridge observes them).
        update_log: for durable acks.
        cluster: what this node shares with the others (broker, presence, sessions, limits).
        assistant: where ``ai_request`` goes (default: none, so AI is reported unavailable).
    """

    def __init__(
        self,
        settings: Settings,
        auth: Authenticator,
        rooms: RoomManager,
        update_log: UpdateLog,
        cluster: Cluster,
        *,
        assistant: Assistant | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.rooms = rooms
        self.update_log = update_log
        self.broker: Broker = cluster.broker
        self._lost: asyncio.Queue[Subscription] = asyncio.Queue()
        self.hub = Hub(self.broker, on_lost=self._lost.put_nowait)
        self.publisher = Publisher(self.broker, self.hub, backlog_max=settings.publish_backlog_max)
        self.presence = cluster.presence
        self.bridge = Bridge(rooms, self.publisher, self.presence, lock_ttl_s=settings.lock_ttl_s)
        self.sessions = cluster.sessions
        self.rate = cluster.rate
        self.connections = cluster.connections
        self.live: dict[str, Session] = {}  # this node's connected sessions, by id
        self.assistant: Assistant = assistant or UnavailableAssistant()
        self._sweeper: asyncio.Task[None] | None = None
        self._repairer: asyncio.Task[None] | None = None
        self._control: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Gateway:
        await self.publisher.__aenter__()
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="presence-sweeper")
        self._repairer = asyncio.create_task(self._drop_lost(), name="lost-subscriptions")
        self._control = asyncio.create_task(self._listen_control(), name="control-channel")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks = [task for task in (self._sweeper, self._repairer, self._control) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.publisher.__aexit__(exc_type, exc, tb)

    async def publish(
        self,
        channel: str,
        kind: str,
        data: dict[str, Any],
        *,
        publisher: str | None = None,
        trace_id: str | None = None,
    ) -> Publication:
        """Publish a server message on ``channel`` (REST publish, notifications, assistants).

        Raises:
            InvalidRequest: ``channel`` is not a valid channel name.
        """
        parse_channel(channel)
        sender = publisher or SERVER_SESSION
        message = server_message(kind, sender, data, trace_id or new_trace_id())
        return await self.publisher.submit(channel, message, sender, retry=False)

    async def publish_message(self, channel: str, message: dict[str, Any]) -> int:
        """Publish ``{"type", "data"}`` on ``channel`` as the server; returns its offset (``Publish``)."""
        publication = await self.publish(channel, message["type"], message["data"])
        return publication.offset

    # -- sessions ------------------------------------------------------------------------------

    async def attach(self, session: Session) -> None:
        """Register a freshly accepted session as live (here, and for the other nodes)."""
        self.live[session.session_id] = session
        await self.sessions.mark_live(session.session_id, session.user_id, self.settings.node_id)

    async def detach(self, session: Session) -> None:
        """The connection ended: leave every channel and canvas, and park the session for resumption."""
        state = session.state()
        try:
            for subscription in list(session.subscriptions.values()):
                await self.hub.remove(subscription)
            session.subscriptions.clear()
            for canvas_id in list(session.seats):
                await self._unseat(session, canvas_id, None)
        finally:  # whatever failed above, the session is no longer live and can be resumed
            if self.live.get(session.session_id) is session:
                del self.live[session.session_id]
            try:
                await self.sessions.park(state)
                await self.sessions.mark_gone(state.session_id)
            finally:
                session.detached.set()

    async def resume(self, session: Session, session_id: str) -> SessionState | None:
        """Take over parked (or still live) session ``session_id`` of the same user, if it exists.

        On success ``session`` adopts the old session id; the caller restores the channels.
        """
        live = self.live.get(session_id)
        if live is not None and live is not session and live.user_id == session.user_id:
            live.fail(SessionTakenOver("another connection resumed this session"))
            try:
                async with asyncio.timeout(5):
                    await live.detached.wait()
            except TimeoutError:
                return None
        state = await self.sessions.take(session_id, session.user_id)
        if state is None:
            state = await self._take_over_remote(session_id, session.user_id)
        if state is None:
            return None
        if self.live.get(session.session_id) is session:
            del self.live[session.session_id]
        await self.sessions.mark_gone(session.session_id)
        session.session_id = session_id
        self.live[session_id] = session
        await self.sessions.mark_live(session_id, session.user_id, self.settings.node_id)
        return state

    async def _take_over_remote(self, session_id: str, user_id: str) -> SessionState | None:
        """Ask the node still holding the session to close it, then take it once that node parked it."""
        orphan = await self.sessions.claim_orphan(session_id, user_id)  # its node died
        if orphan is not None:
            return orphan
        owner = await self.sessions.live_owner(session_id, user_id)
        if owner is None or owner == self.settings.node_id:
            return None
        request = json.dumps({"session": session_id, "user": user_id}).encode()
        try:
            await self.broker.publish(control_channel(owner), request, publisher=self.settings.node_id)
        except BrokerUnavailable:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _TAKEOVER_WAIT_S
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            state = await self.sessions.take(session_id, user_id)
            if state is None:
                state = await self.sessions.claim_orphan(session_id, user_id)
            if state is not None:
                return state
        log.warning("remote session takeover timed out", extra={"session_id": session_id, "node_id": owner})
        return None

    def _on_control(self, publication: Publication) -> None:
        """A request from another node: close the session it resumes (it is then parked for it)."""
        try:
            request = json.loads(publication.payload)
            session = self.live.get(request["session"])
        except (ValueError, KeyError, TypeError):
            log.warning("bad control message", extra={"channel": publication.channel})
            return
        if session is not None and session.user_id == request.get("user"):
            session.fail(SessionTakenOver("another connection resumed this session on another node"))

    async def _listen_control(self) -> None:
        """Subscribe to this node's control channel, retrying while the broker is unavailable."""
        while True:
            try:
                await self.broker.subscribe(control_channel(self.settings.node_id), self._on_control)
                return
            except BrokerUnavailable:
                await asyncio.sleep(1.0)

    # -- channels ------------------------------------------------------------------------------

    async def subscribe(
        self,
        session: Session,
        channel: Channel,
        *,
        since: Since | None = None,
        history: bool = False,
        trace_id: str | None = None,
    ) -> None:
        """Subscribe ``session`` to ``channel``: reply ``subscribed``, replay, then deliver live.

        With ``since``, every publication after it is replayed exactly once, in order, or the
        subscription fails; with ``history``, up to ``history_replay_max`` recent ones are.

        Raises:
            Forbidden: the token does not allow the channel.
            SubscriptionFailed: channel limit, canvas full, or ``since`` cannot be replayed.
            RoomUnavailable: the canvas could not be loaded.
        """
        authorize_subscribe(session.principal, channel)
        name = channel.name
        existing = session.subscriptions.get(name)
        if existing is not None:
            self._send_subscribed(session, channel, existing.position, trace_id)
            return
        if len(session.subscriptions) >= self.settings.max_channels_per_connection:
            raise SubscriptionFailed(
                f"limit of {self.settings.max_channels_per_connection} channels per connection reached"
            )
        if channel.canvas_id is not None:
            await self._seat(session, channel.canvas_id, name)
        subscription = Subscription(name, session)
        session.subscriptions[name] = subscription
        try:
            position = await self.hub.add(subscription)
            replay: list[Publication] = []
            if since is not None and not is_ephemeral(name):
                start = StreamPosition(since.offset, since.epoch or position.epoch)
                try:
                    replay = await self.broker.history(name, start)
                except HistoryUnavailable as exc:
                    raise SubscriptionFailed(f"cannot replay {name}: {exc}") from exc
                subscription.start_at(start)
            elif history and not is_ephemeral(name):
                recent = StreamPosition(0, position.epoch)
                replay = await self.broker.history(name, recent, limit=self.settings.history_replay_max)
                first = replay[0].offset - 1 if replay else position.offset
                subscription.start_at(StreamPosition(first, position.epoch))
            else:
                subscription.start_at(position)
        except BrokerUnavailable as exc:
            await self._drop(session, subscription)
            raise SubscriptionFailed(f"cannot subscribe to {name} now (broker unavailable); retry") from exc
        except BaseException:
            await self._drop(session, subscription)
            raise
        # recorded before `subscribed` goes out: a client told it is subscribed can count on a resume
        # on another node knowing the channel, even if this node dies right after
        await self._record(session)
        self._send_subscribed(session, channel, position, trace_id)
        subscription.go_live([to_delivery(publication) for publication in replay])

    async def unsubscribe(self, session: Session, name: str) -> bool:
        """Remove ``session``'s subscription to ``name``; False if it had none."""
        subscription = session.subscriptions.get(name)
        if subscription is None:
            return False
        await self._drop(session, subscription)
        await self._record(session)
        return True

    async def _record(self, session: Session) -> None:
        """Keep the session's channels known to the other nodes (a resume after this node died)."""
        if self.live.get(session.session_id) is session:
            await self.sessions.mark_live(
                session.session_id, session.user_id, self.settings.node_id, session.subscriptions
            )

    def participant_count(self, channel: Channel) -> int:
        """Users on the canvas (JSON and Yjs) for canvas channels; subscribed sessions otherwise."""
        if channel.canvas_id is not None:
            return self.presence.count(channel.canvas_id)
        return self.hub.local_count(channel.name)

    def _send_subscribed(
        self, session: Session, channel: Channel, position: StreamPosition, trace_id: str | None
    ) -> None:
        data = {
            "channel": channel.name,
            "participantCount": self.participant_count(channel),
            "offset": position.offset,
            "epoch": position.epoch,
        }
        session.send("subscribed", data, trace_id, channel=channel.name)

    async def _drop(self, session: Session, subscription: Subscription) -> None:
        name = subscription.channel
        if session.subscriptions.get(name) is subscription:
            del session.subscriptions[name]
        await self.hub.remove(subscription)
        channel = parse_channel(name)
        if channel.canvas_id is not None:
            await self._unseat(session, channel.canvas_id, name)

    async def _seat(self, session: Session, canvas_id: str, channel: str) -> Seat:
        seat = session.seats.get(canvas_id)
        if seat is not None:
            seat.channels.add(channel)
            return seat
        presence = self.presence
        await presence.refresh(canvas_id)  # other nodes' participants, for the limit, count and events
        limit = self.settings.max_users_per_canvas
        if not presence.is_present(canvas_id, session.user_id) and presence.count(canvas_id) >= limit:
            raise SubscriptionFailed(f"canvas {canvas_id} already has {limit} users")
        stack = AsyncExitStack()
        try:
            room = await stack.enter_async_context(self.rooms.lease(canvas_id))
        except BaseException:
            await stack.aclose()
            raise
        seat = session.seats[canvas_id] = Seat(canvas_id, room, stack, {channel})
        self.bridge.join(canvas_id, session.user_id, session.principal.name, session.session_id)
        await presence.refresh(canvas_id)  # and make this participant known to the other nodes now
        return seat

    async def _unseat(self, session: Session, canvas_id: str, channel: str | None) -> None:
        """Release ``channel``'s hold on the canvas (``None``: every hold)."""
        seat = session.seats.get(canvas_id)
        if seat is None:
            return
        if channel is not None:
            seat.channels.discard(channel)
            if seat.channels:
                return
        del session.seats[canvas_id]
        self.bridge.leave(seat.room, session.user_id, session.session_id)
        await seat.stack.aclose()

    async def _drop_lost(self) -> None:
        """Drop subscriptions whose channel the broker reset, and tell their clients (PROTOCOL.md 2.3).

        The client reloads the state and subscribes again, as after a failed replay.
        """
        while True:
            subscription = await self._lost.get()
            session = subscription.receiver
            if (
                not isinstance(session, Session)
                or session.subscriptions.get(subscription.channel) is not subscription
            ):
                continue
            try:
                await self._drop(session, subscription)
            except Exception:
                log.exception("dropping a lost subscription failed", extra={"channel": subscription.channel})
            error = SubscriptionFailed(
                f"publications of {subscription.channel} were lost (broker history reset): "
                "reload the state and subscribe again"
            )
            session.send_error(error, channel=subscription.channel)
            log.warning(
                "subscription lost", extra={"session_id": session.session_id, "channel": subscription.channel}
            )

    async def _sweep_idle(self) -> None:
        interval = min(self.settings.presence_idle_after_s / 4, 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.bridge.sweep_idle()
            except Exception:
                log.exception("presence sweep failed")
