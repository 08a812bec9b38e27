"""Shared fixtures: real uvicorn servers on free ports, tokens, real databases, and a guard that no token
is ever logged.

``database_url`` is parametrized over ``sqlite`` and ``postgresql``. PostgreSQL comes from
``MAILY_TEST_PG_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``): a database
``maily_test_<hex>`` is created there for the session and dropped at its end. When the server is
unreachable the PostgreSQL tests are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from app.auth import Authenticator
from app.config import Settings
from app.main import create_app
from app.node import Node
from storage.db import make_engine
from storage.migrate import upgrade
from tests.redisserver import RedisServer

JWT_SECRET = "test-secret-0123456789abcdef0123456789"
ISSUED_TOKENS: set[str] = set()
SERVER_LOG_FILES: list[Path] = []  # stderr of server subprocesses, checked by the token guard too


CLIENT_LOGGERS = ("websockets.client",)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(CLIENT_LOGGERS):
            return  # the test's own WebSocket clients log their request line; the server must not
        try:
            self.lines.append(record.getMessage() + " " + repr(vars(record)))
        except Exception:
            self.lines.append(repr(vars(record)))


_COLLECTOR = _Collect()


@pytest.fixture(scope="session", autouse=True)
def no_token_in_logs() -> Any:
    """Capture every log record of the whole run (DEBUG and up); at the end, no issued token may appear."""
    root = logging.getLogger()
    root.addHandler(_COLLECTOR)
    previous = root.level
    root.setLevel(logging.DEBUG)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield
    assert _COLLECTOR in root.handlers, "the log guard's handler was removed during the run"
    root.removeHandler(_COLLECTOR)
    root.setLevel(previous)
    texts = list(_COLLECTOR.lines) + [p.read_text(errors="replace") for p in SERVER_LOG_FILES if p.exists()]
    leaked = [token for token in ISSUED_TOKENS if any(token in text for text in texts)]
    assert not leaked, f"{len(leaked)} issued token(s) appeared in log output"


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "jwt_secret": JWT_SECRET,
        "node_id": "test-node",
        "unload_grace_s": 0.2,
        "commit_window_ms": 5,
        "log_json": False,
    }
    values.update(overrides)
    return Settings(**values)


def mint(
    sub: str = "alice", perms: dict[str, str] | None = None, *, ttl: int = 600, name: str | None = None
) -> str:
    """Sign a token with the test secret and remember it for the log guard."""
    token = Authenticator(test_settings()).issue(
        sub, name or sub.title(), perms or {"canvas:*": "write"}, ttl_s=ttl
    )
    ISSUED_TOKENS.add(token)
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A real uvicorn serving ``create_app(settings)`` in this event loop."""

    settings: Settings
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def node(self) -> Node:
        return self.server.config.loaded_app.app.state.node  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.server.should_exit = True
        async with asyncio.timeout(15):
            await self.task


async def start_server(
    settings: Settings, port: int | None = None, ws: str = "websockets-sansio"
) -> RunningServer:
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        ws=ws,
        ws_per_message_deflate=False,
        ws_max_size=settings.max_sync_frame_bytes + 64,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before starting")
            await asyncio.sleep(0.01)
    return RunningServer(settings, port, server, task)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'maily.db'}"


@pytest.fixture
async def server_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start servers with ``await server_factory(**settings_overrides)``; all are stopped at the end."""
    running: list[RunningServer] = []

    async def start(
        port: int | None = None, ws: str = "websockets-sansio", **overrides: Any
    ) -> RunningServer:
        server = await start_server(test_settings(**overrides), port, ws)
        running.append(server)
        return server

    yield start
    for server in running:
        if not server.task.done():
            await server.stop()


@pytest.fixture
async def server(server_factory: Callable[..., Any], sqlite_url: str) -> RunningServer:
    """One node on an embedded SQLite file."""
    return await server_factory(database_url=sqlite_url)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class ServerProcess:
    """``maily-realtime serve`` as a real subprocess (for kill -9 and multi-node tests); stopped by PID."""

    def __init__(self, log_dir: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self._port_chosen = port is not None
        env.setdefault("MAILY_NODE_ID", f"proc-{secrets.token_hex(4)}")
        self.env = {**os.environ, "MAILY_JWT_SECRET": JWT_SECRET, "MAILY_LOG_LEVEL": "INFO", **env}
        self.log_path = log_dir / f"server-{self.port}-{len(SERVER_LOG_FILES)}.log"
        SERVER_LOG_FILES.append(self.log_path)
        self.process: asyncio.subprocess.Process | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ServerProcess:
        """Start and wait until this very process answers /healthz (checked by its node id).

        A free port can be taken by someone else between ``free_port()`` and the server's bind;
        then the server exits and, unless the caller chose the port, it is started on another one.
        """
        for _ in range(3):
            if await self._start_once():
                return self
            if self._port_chosen:
                break
            self.port = free_port()
        raise RuntimeError(f"server did not start: {self.log_path.read_text()}")

    async def _start_once(self) -> bool:
        import httpx

        log_file = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
            env=self.env, stdout=log_file, stderr=log_file,
        )  # fmt: skip
        log_file.close()
        async with httpx.AsyncClient() as http, asyncio.timeout(30):
            while True:
                if self.process.returncode is not None:
                    return False
                try:
                    reply = await http.get(f"{self.http_url}/healthz")
                    if reply.status_code == 200 and reply.json().get("nodeId") == self.env["MAILY_NODE_ID"]:
                        return True
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()


@pytest.fixture
async def server_processes(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start ``ServerProcess``es with ``await server_processes(**env)``; all are stopped at the end."""
    started: list[ServerProcess] = []

    async def start(port: int | None = None, **env: str) -> ServerProcess:
        process = ServerProcess(tmp_path, port, **env)
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        await process.stop()


# -- real databases --------------------------------------------------------------------------------------

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_CONNECT_TIMEOUT_S = 5.0


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    # In a thread of its own: asyncio.run() must not touch the event loop pytest-asyncio set up here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: URL, statement: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=PG_CONNECT_TIMEOUT_S)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (async URL), dropped at the end."""
    server = make_url(os.environ.get("MAILY_TEST_PG_URL", DEFAULT_PG_URL))
    name = f"maily_test_{secrets.token_hex(4)}"
    try:
        _run(_admin(server, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        message = (
            f"PostgreSQL is not reachable at {server.render_as_string(hide_password=True)} "
            f"({type(exc).__name__}: {exc}). Start one, e.g. `docker run -d -p 5432:5432 "
            "-e POSTGRES_HOST_AUTH_METHOD=trust postgres:16`, or point MAILY_TEST_PG_URL at a server "
            "where this user may CREATE DATABASE."
        )
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        _run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An async SQLAlchemy URL of an unmigrated (SQLite) or possibly migrated (PostgreSQL) database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'maily.db'}"
    return request.getfixturevalue("pg_database_url")


@pytest.fixture
async def server_database_url(database_url: str) -> str:
    """``database_url``, migrated and emptied, for servers (the PostgreSQL database is shared)."""

    async with asyncio.timeout(60):
        await asyncio.to_thread(upgrade, database_url)
    engine = make_engine(database_url)
    try:
        if engine.dialect.name == "postgresql":
            async with asyncio.timeout(10), engine.begin() as conn:
                await conn.execute(text("TRUNCATE documents, document_updates, snapshots RESTART IDENTITY"))
    finally:
        await engine.dispose()
    return database_url


# -- a private Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private ``redis-server`` for the whole run (tests separate themselves by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    return shared_redis.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests sharing the Redis never see each other's keys."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test alone, which it may kill and restart."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()
