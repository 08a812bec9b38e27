"""Real databases for the storage tests: a SQLite file per test, one PostgreSQL database per session.

``database_url`` is parametrized over ``sqlite`` and ``postgresql``. PostgreSQL comes from
``MAILY_TEST_PG_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``): a database
``maily_test_<hex>`` is created there for the session and dropped at its end. When the server is
unreachable the PostgreSQL tests are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import make_engine, make_sessionmaker
from storage.documents import SqlDocumentStore
from storage.migrate import upgrade

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_CONNECT_TIMEOUT_S = 5.0
MIGRATE_TIMEOUT_S = 60.0


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
        if os.environ.get("CI", "").lower() == "true":
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
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the database migrated to head, with all tables empty."""
    async with asyncio.timeout(MIGRATE_TIMEOUT_S):
        await asyncio.to_thread(upgrade, database_url)
    engine = make_engine(database_url)
    try:
        if engine.dialect.name == "postgresql":  # shared by the session: empty it (SQLite is a new file)
            async with asyncio.timeout(10), engine.begin() as conn:
                await conn.execute(text("TRUNCATE documents, document_updates, snapshots RESTART IDENTITY"))
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> SqlDocumentStore:
    """A ``SqlDocumentStore`` on an empty, migrated database."""
    return SqlDocumentStore(make_sessionmaker(engine))
