"""Alembic migrations of the storage schema; run them with ``storage.migrate.upgrade(url)``.

Imports only ``storage.models``; the database URL is given by the caller, never read from ``app``.
"""
