"""``create_app(settings)``: the composition root. Wires storage, the update log, rooms and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from crdt.awareness_relay import AwarenessRelay
from crdt.persist import UpdateLog
from crdt.relay import DocumentRelay
from crdt.room import RoomManager
from storage.db import make_engine, make_sessionmaker
from storage.documents import SqlDocumentStore
from storage.migrate import upgrade

from . import json_ws, ws
from .auth import Authenticator
from .canvases import AutoSnapshotter, CanvasService
from .cluster import local_cluster
from .cluster_redis import redis_cluster
from .config import Settings
from .errors import install_error_handlers
from .gateway import Gateway
from .logging import install_redaction
from .node import Node
from .notify import Notifier
from .routes import canvases, channels, health, notifications, snapshots
from .transport import CaptureWsProtocol

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app of one node. ``settings`` defaults to the environment (``MAILY_*``)."""
    settings = settings or Settings()
    install_redaction()
    auth = Authenticator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Node]]:
        async with AsyncExitStack() as stack:  # unwinds in reverse: rooms, then update log, then engine
            if settings.should_migrate:
                await asyncio.to_thread(upgrade, settings.database_url)
            engine = make_engine(settings.database_url)
            stack.push_async_callback(engine.dispose)
            # the one place that knows which kind of cluster this node is part of
            if settings.redis_url:
                cluster = await stack.enter_async_context(redis_cluster(settings))
            else:
                cluster = local_cluster(settings)
            broker = cluster.broker
            store = SqlDocumentStore(make_sessionmaker(engine))
            update_log = await stack.enter_async_context(
                UpdateLog(
                    store,
                    commit_window_s=settings.commit_window_ms / 1000,
                    compact_after=settings.compact_after_updates,
                )
            )
            rooms = await stack.enter_async_context(
                RoomManager(
                    store,
                    update_log,
                    node_id=settings.node_id,
                    unload_grace_s=settings.unload_grace_s,
                    load_timeout_s=settings.load_timeout_s,
                    max_frame_bytes=settings.max_frame_bytes,
                    max_sync_frame_bytes=settings.max_sync_frame_bytes,
                    max_peers_per_room=settings.max_peers_per_room,
                )
            )
            relay = None
            if settings.redis_url:  # other nodes may hold the same canvases: relay their updates
                relay = await stack.enter_async_context(
                    DocumentRelay(
                        rooms,
                        broker,
                        store,
                        broker_timeout_s=2 * settings.redis_timeout_s,
                        store_timeout_s=settings.load_timeout_s,
                        backlog_max_bytes=settings.relay_backlog_max_bytes,
                    )
                )
                # and their editors' cursors: Yjs awareness, at most once
                await stack.enter_async_context(
                    AwarenessRelay(rooms, broker, broker_timeout_s=2 * settings.redis_timeout_s)
                )
            gateway = await stack.enter_async_context(Gateway(settings, auth, rooms, update_log, cluster))
            canvas_service = CanvasService(
                store,
                rooms,
                update_log,
                pre_restore_keep=settings.pre_restore_snapshot_keep,
                timeout_s=settings.request_timeout_s,
            )
            auto_snapshots = await stack.enter_async_context(
                AutoSnapshotter(
                    canvas_service,
                    every_updates=settings.auto_snapshot_every_updates,
                    interval_s=settings.auto_snapshot_interval_s,
                    keep=settings.auto_snapshot_keep,
                )
            )
            notifier = Notifier(publish=gateway.publish_message)
            node = Node(
                settings,
                auth,
                engine,
                store,
                update_log,
                rooms,
                canvas_service,
                auto_snapshots,
                notifier,
                broker=broker,
                gateway=gateway,
                cluster=cluster,
                relay=relay,
            )
            app.state.node = node  # for code outside a request (tests, the CLI)
            log.info("node started", extra={"node_id": settings.node_id})
            yield {"node": node}
            log.info("node stopping", extra={"node_id": settings.node_id})

    app = FastAPI(title="Maily Realtime", version="0.1.0", lifespan=lifespan)
    app.add_middleware(CaptureWsProtocol)
    app.include_router(ws.router)
    app.include_router(json_ws.router)
    app.include_router(health.router)
    app.include_router(canvases.router)
    app.include_router(snapshots.router)
    app.include_router(notifications.router)
    app.include_router(channels.router)
    install_error_handlers(app)
    return app
