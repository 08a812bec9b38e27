"""Programmatic Alembic upgrade/downgrade of the storage schema (the ``migrations`` package).

Imports ``alembic`` and locates ``migrations`` by its package path; never imports ``app`` or ``crdt``.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.resources import files

from alembic import command
from alembic.config import Config

log = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    """Build an Alembic ``Config`` for the installed ``migrations`` package, targeting ``url``.

    For callers that need other Alembic commands (``current``, ``check``, ``stamp``...).

    Args:
        url: SQLAlchemy URL with an async driver (``sqlite+aiosqlite:///...``, ``postgresql+asyncpg://...``).
    """
    directory = files("migrations")
    config = Config(str(directory / "alembic.ini"))
    config.set_main_option("script_location", str(directory))
    # ConfigParser interpolation: a literal "%" (e.g. a percent-encoded password) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the latest).

    Blocking: runs its own event loop (``asyncio.run``) for the async driver, so it must not be called
    from a thread that runs an event loop. From async code use ``await asyncio.to_thread(upgrade, url)``.
    Idempotent: a database already at ``revision`` is left as it is.

    Args:
        url: SQLAlchemy URL with an async driver.
        revision: target revision id, or ``"head"``.

    Raises:
        RuntimeError: called from a thread with a running event loop.
    """
    _refuse_running_loop("upgrade")
    log.info("migrating database up", extra={"revision": revision})
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` drops every table). Destroys data.

    Blocking, like :func:`upgrade`: call it through ``asyncio.to_thread`` from async code.

    Raises:
        RuntimeError: called from a thread with a running event loop.
    """
    _refuse_running_loop("downgrade")
    log.warning("migrating database down", extra={"revision": revision})
    command.downgrade(alembic_config(url), revision)


def _refuse_running_loop(operation: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"expected no running event loop in this thread for {operation}(); "
        f"use `await asyncio.to_thread({operation}, url)`, got a running loop"
    )
