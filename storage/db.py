"""Engine and session factories (no module-level engine), plus the readiness ping.

Imports only ``sqlalchemy``; never ``app`` or ``crdt``. The caller owns the engine and disposes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from storage.errors import StorageUnavailable

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 10
PG_POOL_TIMEOUT_S = 10.0
PG_POOL_RECYCLE_S = 1800


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create an async engine for ``url`` with the settings the stores rely on.

    SQLite (``sqlite+aiosqlite:///path``): every connection gets WAL journaling, ``synchronous=NORMAL``,
    ``foreign_keys=ON`` (the stores rely on ON DELETE CASCADE) and a busy timeout, so concurrent writers
    (e.g. two compactors) wait for each other instead of failing. ``:memory:`` databases use one shared
    connection (StaticPool), since every new connection would otherwise see an empty database.

    PostgreSQL (``postgresql+asyncpg://...``): a bounded pool with pre-ping, so connections dropped by a
    database restart are replaced instead of failing the next unit of work. The stores need the default
    READ COMMITTED isolation level; do not raise it.

    Args:
        url: SQLAlchemy URL with an async driver.
        echo: log every SQL statement (debugging only; logs document bytes).

    Returns:
        A new engine; the caller must ``await engine.dispose()`` at shutdown.
    """
    sa_url = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_async_engine(sa_url, **kwargs)
        event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
        return engine
    kwargs.update(
        pool_pre_ping=True,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_MAX_OVERFLOW,
        pool_timeout=PG_POOL_TIMEOUT_S,
        pool_recycle=PG_POOL_RECYCLE_S,
    )
    return create_async_engine(sa_url, **kwargs)


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL never corrupts the database, and a committed transaction survives a crash of
        # this process (kill -9): it is in the WAL file, in the OS page cache. Only a power loss or OS crash
        # can lose the last few commits. We promise survival of process crashes, not of power loss; FULL
        # would add an fsync to every group commit for that.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    finally:
        cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Create the session factory the stores use, bound to ``engine``.

    ``expire_on_commit=False``: objects read in a unit of work stay readable after its commit.
    """
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine, *, timeout_s: float = 2.0) -> None:
    """Check that the database answers ``SELECT 1`` within ``timeout_s`` (for ``/readyz``).

    Args:
        engine: the engine to check; a pooled connection is borrowed and returned.
        timeout_s: upper bound for getting a connection and running the query.

    Raises:
        StorageUnavailable: the database did not answer, or answered with an error.
    """
    try:
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except TimeoutError as exc:
        raise StorageUnavailable(f"database did not answer within {timeout_s}s") from exc
    except (OSError, SQLAlchemyError) as exc:
        raise StorageUnavailable(f"database ping failed: {type(exc).__name__}") from exc
