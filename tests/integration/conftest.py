"""Engines and stores on real databases for the storage tests.

``database_url`` (in ``tests/conftest.py``) is parametrized over ``sqlite`` and ``postgresql``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import make_engine, make_sessionmaker
from storage.documents import SqlDocumentStore
from storage.migrate import upgrade

MIGRATE_TIMEOUT_S = 60.0


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
