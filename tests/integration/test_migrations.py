"""Alembic migrations on real SQLite and PostgreSQL: up, down to base, up again, no drift from the models."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from storage.db import make_engine
from storage.migrate import downgrade, upgrade
from storage.models import Base

pytestmark = pytest.mark.integration

TABLES = {"documents", "document_updates", "snapshots"}


def _schema_state(conn: Connection) -> tuple[set[str], list[Any], str | None]:
    tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
    diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    return tables, diffs, MigrationContext.configure(conn).get_current_revision()


async def _inspect(url: str) -> tuple[set[str], list[Any], str | None]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_schema_state)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    async with asyncio.timeout(120):
        await asyncio.to_thread(upgrade, database_url)
        tables, diffs, revision = await _inspect(database_url)
        assert tables == TABLES
        assert diffs == []
        assert revision == "0001"

        await asyncio.to_thread(upgrade, database_url)  # idempotent at head

        await asyncio.to_thread(downgrade, database_url, "base")
        tables, _, revision = await _inspect(database_url)
        assert tables == set()
        assert revision is None

        await asyncio.to_thread(upgrade, database_url)
        tables, diffs, revision = await _inspect(database_url)
        assert tables == TABLES
        assert diffs == []
        assert revision == "0001"


async def test_upgrade_refuses_to_run_inside_an_event_loop(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
        upgrade(f"sqlite+aiosqlite:///{tmp_path / 'maily.db'}")
    assert not (tmp_path / "maily.db").exists()


async def test_migrating_leaves_logging_configuration_alone(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ours = logging.getLogger("storage.documents")
    async with asyncio.timeout(60):
        await asyncio.to_thread(upgrade, f"sqlite+aiosqlite:///{tmp_path / 'maily.db'}")
    assert root.handlers == handlers and root.level == level
    assert not ours.disabled  # logging.config.fileConfig would have disabled existing loggers
