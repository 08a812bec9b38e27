"""Schemathesis against the OpenAPI spec of a real server: generated requests never get a 5xx.

Each operation gets a bounded number of examples, valid (positive) and invalid (negative) ones, first
with random path parameters and then aimed at a seeded canvas and snapshot so that the deeper code
paths run too. Responses must also match the documented status codes, content types and schemas.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from pycrdt import Map
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import RunningServer, mint
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e

API_KEY = "fuzz-api-key-0123456789"
MAX_EXAMPLES = 25  # per operation, generation mode and path-parameter set: about 20 s in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(base_url: str, headers: dict[str, str], seeded: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    # DELETE last: it removes the seeded canvas the other operations are aimed at
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    for operation in operations:
        if not operation.path.startswith("/api/"):
            continue
        fixed = {name: value for name, value in seeded.items() if f"{{{name}}}" in operation.path}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in ({}, fixed) if fixed else ({},):
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters or None
                )

                @settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def run(case: Any) -> None:
                    case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=10)

                try:
                    run()
                except (Exception, BaseExceptionGroup) as exc:  # one report per operation and mode
                    failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    return failures


async def test_schemathesis_finds_no_server_errors(server_factory, sqlite_url) -> None:
    server: RunningServer = await server_factory(database_url=sqlite_url, api_key=API_KEY)
    async with yjs_client(server.ws_url, "fuzzed", mint("alice")) as (doc, _, _):
        elements(doc)["e1"] = Map({"type": "rect", "x": 1})
        await eventually(lambda: server.node.rooms.get("fuzzed") is not None)
    await server.node.update_log.wait_durable()
    info = await server.node.canvases.take_snapshot("fuzzed", label="seed", kind="manual", author_id="alice")
    assert info is not None
    headers = {"Authorization": f"Bearer {mint('fuzzer', {'canvas:*': 'admin'})}", "X-API-Key": API_KEY}
    seeded = {"canvas_id": "fuzzed", "snapshot_id": info.id, "user_id": "alice", "channel": "canvas:fuzzed"}
    async with asyncio.timeout(120):
        failures = await asyncio.to_thread(_fuzz, server.http_url, headers, seeded)
    assert not failures, "\n\n".join(failures)
