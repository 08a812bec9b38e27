"""The document store contract (tests/store_contract.py) on InMemoryDocumentStore: no database."""

from __future__ import annotations

import asyncio

import pytest

from storage.memory import InMemoryDocumentStore
from tests.store_contract import CHECKS, Check, assert_conforms


def test_conforms_to_document_store_protocol() -> None:
    assert_conforms(InMemoryDocumentStore)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
async def test_contract(check: Check) -> None:
    async with asyncio.timeout(10):
        await check(InMemoryDocumentStore())
