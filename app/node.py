"""The services one process runs, composed by the lifespan in ``app/main.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from crdt.broker import Broker
from crdt.persist import UpdateLog
from crdt.relay import DocumentRelay
from crdt.room import RoomManager
from storage.documents import SqlDocumentStore

from .auth import Authenticator
from .canvases import AutoSnapshotter, CanvasService
from .cluster import Cluster
from .config import Settings
from .gateway import Gateway
from .notify import Notifier


@dataclass(slots=True)
class Node:
    settings: Settings
    auth: Authenticator
    engine: AsyncEngine
    store: SqlDocumentStore
    update_log: UpdateLog
    rooms: RoomManager
    broker: Broker = field(kw_only=True)  # channel streams (PROTOCOL.md 2.3)
    gateway: Gateway = field(kw_only=True)  # the JSON channel protocol; ``publish`` for server messages
    cluster: Cluster | None = field(default=None, kw_only=True)  # what is shared with other nodes
    relay: DocumentRelay | None = field(default=None, kw_only=True)  # document updates to/from other nodes
    canvases: CanvasService
    auto_snapshots: AutoSnapshotter
    notifier: Notifier


def get_node(connection: HTTPConnection) -> Node:
    """The node serving this request (set by the lifespan as state ``node``)."""
    return connection.state.node


NodeDep = Annotated[Node, Depends(get_node)]
