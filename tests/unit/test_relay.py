"""The cross-node document relay, with two or three "nodes" in one process.

Each node is a ``RoomManager`` with its own ``UpdateLog`` over ONE shared ``InMemoryDocumentStore``
and its own view of ONE shared ``InMemoryBroker`` (``Bus``), as nodes share Redis and PostgreSQL.
Views can drop deliveries and be cut off from the broker; the bus can restart empty (new epochs).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Map

from crdt.broker import StreamPosition
from crdt.errors import BadMessage, RoomClosed
from crdt.keys import doc_channel
from crdt.relay import DocEnvelope, EnvelopeKind, decode_envelope, encode_envelope
from storage.memory import InMemoryDocumentStore
from tests.relaynodes import (
    CANVAS,
    Bus,
    Node,
    cluster,
    converged,
    eventually,
    joined_up,
    received_keys,
    settle,
    settle_publications,
    stored_keys,
    stored_rows,
)

# -- envelope -------------------------------------------------------------------------------------


@given(
    kind=st.sampled_from(list(EnvelopeKind)),
    node_id=st.text(max_size=40),
    payload=st.binary(max_size=200),
    target=st.text(max_size=40),
)
def test_envelope_round_trips(kind: EnvelopeKind, node_id: str, payload: bytes, target: str) -> None:
    envelope = DocEnvelope(kind, node_id, payload, target)
    assert decode_envelope(encode_envelope(envelope)) == envelope


@given(data=st.binary(max_size=60))
def test_envelope_decoding_refuses_garbage_with_bad_message(data: bytes) -> None:
    try:
        decode_envelope(data)
    except BadMessage:
        pass


# -- convergence, order, echo, storage -----------------------------------------------------------


async def test_updates_converge_both_ways_in_order_without_echo_and_stored_once() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        for peer in (n1.peer(), n2.peer()):
            peer.sink.frames.clear()  # type: ignore[attr-defined]
        sent1 = [f"a{i}" for i in range(40)]
        sent2 = [f"b{i}" for i in range(25)]
        for i in range(40):
            n1.edit(sent1[i])
            if i < 25:
                n2.edit(sent2[i])
            if i % 7 == 0:
                await asyncio.sleep(0)
        await eventually(lambda: len(n1.keys()) == 65 and converged(n1, n2))
        # each node's client saw the other node's updates, in the order they were made, once each
        assert received_keys(n2.peer()) == sent1
        assert received_keys(n1.peer()) == sent2
        assert len(n2.peer().sink.frames) == 40  # type: ignore[attr-defined]
        assert len(n1.peer().sink.frames) == 25  # type: ignore[attr-defined]
        # no echo: own envelopes come back from the broker and are dropped, nothing is applied twice
        assert n1.relay.stats.own_dropped >= 40 and n1.relay.stats.applied == 25
        assert n2.relay.stats.applied == 40
        await settle(n1, n2)
        # each update is stored once, by the node where it arrived
        assert stored_rows(n1.store.store) == {"n1": 40, "n2": 25}
        assert await stored_keys(n1.store.store) == n1.keys()


async def test_server_changes_are_relayed_and_deletes_converge() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        n1.edit("gone")
        await eventually(lambda: "gone" in n2.keys())
        with n2.room().transact("bot", "Bot") as doc:
            doc.get("elements", type=Map)["srv"] = Map({"x": 5})
        n1.delete("gone")
        await eventually(lambda: "srv" in n1.keys() and "gone" not in n2.keys())
        assert converged(n1, n2)
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 2, "n2": 1}


async def test_three_nodes_and_many_canvases() -> None:
    async with cluster(("n1", "n2", "n3")) as nodes, AsyncExitStack() as stack:
        for node in nodes:
            for canvas in ("x", "y"):
                await stack.enter_async_context(node.joined(canvas))
        for i in range(10):
            for node in nodes:
                node.edit(f"{node.node_id}-{i}", "x" if i % 2 else "y")
        for canvas in ("x", "y"):
            await eventually(lambda c=canvas: len(nodes[0].keys(c)) == 15 and converged(*nodes, canvas_id=c))
        await settle(*nodes)
        assert stored_rows(nodes[0].store.store, "x") == {"n1": 5, "n2": 5, "n3": 5}


# -- gaps -----------------------------------------------------------------------------------------


async def test_a_dropped_publication_is_detected_and_replayed_in_order() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.peer().sink.frames.clear()  # type: ignore[attr-defined]
        n1.edit("k0")
        await eventually(lambda: "k0" in n2.keys())
        n2.broker.drop_next = 1
        for i in range(1, 6):
            n1.edit(f"k{i}")
        await eventually(lambda: len(n2.keys()) == 6)
        assert n2.broker.dropped == 1
        assert n2.relay.stats.gaps == 1 and n2.relay.stats.replayed >= 1
        assert received_keys(n2.peer()) == [f"k{i}" for i in range(6)]  # the gap did not reorder


async def test_a_lost_last_publication_is_found_by_the_position_check() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.broker.drop_next = 1
        n1.edit("tail")  # nothing follows it
        await eventually(lambda: "tail" in n2.keys())
        assert n2.broker.dropped == 1 and n2.relay.stats.replayed >= 1


async def test_trimmed_history_falls_back_to_a_full_state_exchange() -> None:
    bus = Bus(history_max=3)
    async with cluster(bus=bus) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.store.append_gate.clear()  # n1's updates are not in storage: only n1's memory has them
        n2.broker.drop_next = 10
        for i in range(10):
            n1.edit(f"k{i}")
        await eventually(lambda: n2.broker.dropped == 10)
        n1.edit("k10")  # reveals the gap; its history is gone
        await eventually(lambda: len(n2.keys()) == 11)
        assert n2.relay.stats.exchanges >= 1
        n1.store.append_gate.set()
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 11}  # n2 stored none of what it was sent


async def test_broker_restarting_empty_changes_the_epoch_and_nodes_exchange_state() -> None:
    bus = Bus()
    async with cluster(bus=bus) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.broker.drop_next = 3
        for i in range(3):
            n1.edit(f"lost{i}")  # published, never delivered to n2, then the broker forgets them
        await eventually(lambda: n2.broker.dropped == 3)
        await bus.reset()
        n1.edit("after")
        await eventually(lambda: len(n2.keys()) == 4 and converged(n1, n2))
        n2.edit("back")
        await eventually(lambda: "back" in n1.keys())


async def test_many_canvases_recover_together_after_the_broker_restarted_empty() -> None:
    bus = Bus()
    canvases = [f"m{i}" for i in range(40)]
    async with cluster(bus=bus) as (n1, n2), AsyncExitStack() as stack:
        for canvas in canvases:
            for node in (n1, n2):
                await stack.enter_async_context(node.joined(canvas))
        await settle_publications(n1, n2)
        n1.store.append_gate.clear()  # only n1's memory has what follows
        n2.broker.drop_next = len(canvases)
        for canvas in canvases:
            n1.edit("lost", canvas)
        await eventually(lambda: n2.broker.dropped == len(canvases))
        await bus.reset()
        await eventually(lambda: all("lost" in n2.keys(canvas) for canvas in canvases))
        n1.store.append_gate.set()


async def test_a_loss_reported_by_the_broker_leads_to_a_full_state_exchange() -> None:
    async with cluster(check_interval_s=60) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.store.append_gate.clear()
        n2.broker.drop_next = 2
        n1.edit("lost1")
        n1.edit("lost2")
        await eventually(lambda: n2.broker.dropped == 2)
        await n2.broker.report_reset(doc_channel(CANVAS))  # delivery resumes after the lost ones
        await eventually(lambda: {"lost1", "lost2"} <= n2.keys().keys())
        assert n2.relay.stats.resets == 1 and n2.relay.stats.gaps == 0 and n2.relay.stats.exchanges == 1
        n1.edit("next")
        await eventually(lambda: "next" in n2.keys())
        n1.store.append_gate.set()


async def test_restart_without_further_traffic_is_found_by_the_position_check() -> None:
    bus = Bus()
    async with cluster(bus=bus) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.store.append_gate.clear()
        n2.broker.drop_next = 1
        n1.edit("lost")
        await eventually(lambda: n2.broker.dropped == 1)
        await bus.reset()  # nobody publishes afterwards
        await eventually(lambda: "lost" in n2.keys())
        n1.store.append_gate.set()


# -- loading --------------------------------------------------------------------------------------


async def test_loading_gets_what_another_node_holds_but_has_not_stored() -> None:
    async with cluster() as (n1, n2), n1.joined():
        n1.store.append_gate.clear()
        for i in range(5):
            n1.edit(f"k{i}")
        await settle_publications(n1)
        async with n2.joined():
            await eventually(lambda: len(n2.keys()) == 5)
            assert n2.relay.stats.load_requests == 1 and n1.relay.stats.sync_replies == 1
        n1.store.append_gate.set()
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 5}


async def test_updates_published_during_a_load_are_applied_after_it() -> None:
    async with cluster() as (n1, n2), n1.joined():
        n1.store.append_gate.clear()
        n2.store.load_gate.clear()
        joining = asyncio.create_task(_join_and_wait(n2, 3))
        await eventually(lambda: n2.store.loads == 1)  # subscribed, now reading the store
        for i in range(3):
            n1.edit(f"k{i}")
        await settle_publications(n1)
        n2.store.load_gate.set()
        async with asyncio.timeout(5):
            await joining
        assert n2.relay.stats.loaded_pending == 3
        n1.store.append_gate.set()


async def _join_and_wait(node: Node, count: int) -> None:
    async with node.joined():
        await eventually(lambda: len(node.keys()) == count)


async def test_unloading_unsubscribes_and_reloading_resubscribes() -> None:
    async with cluster() as (n1, n2), n1.joined():
        async with n2.joined():
            n2.edit("x")
            await eventually(lambda: "x" in n1.keys())
        channel = doc_channel(CANVAS)
        await eventually(lambda: channel not in n2.broker.handlers)
        n1.edit("y")
        async with n2.joined():
            await eventually(lambda: {"x", "y"} <= n2.keys().keys())
            assert channel in n2.broker.handlers
            n1.edit("z")
            await eventually(lambda: "z" in n2.keys())


async def test_a_canvas_deleted_on_one_node_is_closed_on_the_others() -> None:
    bus = Bus()
    async with cluster(("n1", "n2", "n3"), bus=bus) as (n1, n2, n3), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        peer1, peer2 = n1.peer(), n2.peer()
        # n3 does not hold the canvas (the REST delete may arrive on any node)
        async with n3.rooms.deleting(CANVAS, RoomClosed("canvas deleted")):
            await eventually(lambda: n1.rooms.get(CANVAS) is None and n2.rooms.get(CANVAS) is None)
        assert isinstance(peer1.error, RoomClosed) and isinstance(peer2.error, RoomClosed)
        await settle_publications(n1, n2, n3)
        name = doc_channel(CANVAS)
        position = await bus.broker.position(name)
        history = await bus.broker.history(name, StreamPosition(0, position.epoch))
        closes = [
            envelope.node_id
            for envelope in (decode_envelope(p.payload) for p in history)
            if envelope.kind is EnvelopeKind.CLOSED
        ]
        assert closes == ["n3"]  # the nodes that closed because of it do not echo it


# -- outages --------------------------------------------------------------------------------------


async def test_a_node_cut_off_from_the_broker_serves_locally_and_catches_up() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.broker.down = True
        for i in range(20):
            n1.edit(f"a{i}")
            n2.edit(f"b{i}")
        await asyncio.sleep(0.3)
        assert len(n1.keys()) == 20 + len([k for k in n1.keys() if k.startswith("b")])
        assert not n1.relay.broker_up and n1.relay.backlog > 0
        n1.broker.down = False
        await eventually(lambda: len(n1.keys()) == 40 and converged(n1, n2))
        assert n1.relay.broker_up
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 20, "n2": 20}
        assert await stored_keys(n1.store.store) == n1.keys()


async def test_a_backlog_drains_as_coalesced_updates_in_order() -> None:
    async with cluster(coalesce_max=8) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.peer().sink.frames.clear()  # type: ignore[attr-defined]
        n1.broker.down = True
        for i in range(30):
            n1.edit(f"a{i}")
        await eventually(lambda: not n1.relay.broker_up)
        n1.broker.down = False
        await eventually(lambda: len(n2.keys()) == 30)
        assert n1.relay.stats.coalesced >= 20
        assert received_keys(n2.peer()) == [f"a{i}" for i in range(30)]
        assert len(n2.peer().sink.frames) <= 5  # type: ignore[attr-defined]
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 30}


async def test_backlog_over_its_bound_becomes_one_resync() -> None:
    async with cluster(backlog_max_bytes=600) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.broker.down = True
        for i in range(30):
            n1.edit(f"a{i}")
        assert n1.relay.stats.overflows == 1
        assert n1.relay.backlog < 30
        n2.edit("b")
        n1.broker.down = False
        await eventually(lambda: len(n2.keys()) == 31 and converged(n1, n2))
        assert n2.relay.stats.exchanges >= 1
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 30, "n2": 1}


async def test_subscribe_failing_at_load_is_repaired_later() -> None:
    async with cluster() as (n1, n2), n1.joined():
        n1.edit("before")
        await settle(n1)
        n2.broker.down = True
        async with n2.joined():
            assert "before" in n2.keys()  # loaded from storage while the broker is unreachable
            n1.edit("during")
            n2.edit("local")
            await asyncio.sleep(0.1)
            n2.broker.down = False
            await eventually(lambda: {"before", "during", "local"} <= n2.keys().keys() and converged(n1, n2))


async def test_compaction_racing_on_two_nodes_loses_nothing() -> None:
    store = InMemoryDocumentStore()
    async with cluster(store=store, compact_after=10) as (n1, n2), n1.joined(), n2.joined():
        for i in range(60):
            n1.edit(f"a{i}")
            n2.edit(f"b{i}")
            if i % 5 == 0:
                await asyncio.sleep(0.002)
        await eventually(lambda: len(n1.keys()) == 120 and converged(n1, n2))
        await settle(n1, n2)
        await asyncio.gather(n1.log.compact(CANVAS), n2.log.compact(CANVAS))
        assert await stored_keys(store) == n1.keys()


# -- property: random interleavings and faults ----------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), st.integers(0, 1), st.integers(0, 15)),
        st.tuples(st.just("delete"), st.integers(0, 1), st.integers(0, 15)),
        st.tuples(st.just("drop"), st.integers(0, 1), st.integers(1, 4)),
        st.tuples(st.just("down"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("reset"), st.just(0), st.just(0)),
        st.tuples(st.just("yield"), st.just(0), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, history_max=st.sampled_from([2, 50]), sync_delivery=st.booleans())
async def test_random_edits_and_faults_converge(
    ops: list[tuple[str, int, Any]], history_max: int, sync_delivery: bool
) -> None:
    bus = Bus(history_max=history_max, async_delivery=not sync_delivery)
    store = InMemoryDocumentStore()
    async with cluster(bus=bus, store=store, backlog_max_bytes=2000, coalesce_max=4) as nodes:
        n1, n2 = nodes
        accepted = Counter[str]()  # updates each node accepted from its clients (PEER changes)
        for node in nodes:
            node.rooms.observers.append(
                lambda room, change, name=node.node_id: accepted.update([name] if change.log_seq else [])
            )
        async with n1.joined(), n2.joined():
            for step, (op, who, arg) in enumerate(ops):
                node = nodes[who]
                if op == "edit":
                    node.edit(f"k{arg}", value=step)
                elif op == "delete":
                    node.delete(f"k{arg}")
                elif op == "drop":
                    node.broker.drop_next += arg
                elif op == "down":
                    node.broker.down = arg
                elif op == "reset":
                    await bus.reset()
                else:
                    for _ in range(arg):
                        await asyncio.sleep(0)
            for node in nodes:
                node.broker.down = False
                node.broker.drop_next = 0
            await eventually(lambda: converged(n1, n2), timeout=10)
            await settle(n1, n2)
            assert converged(n1, n2)
            assert await stored_keys(store) == n1.keys()
            assert stored_rows(store) == accepted  # each accepted update stored once, by its node


@pytest.mark.parametrize("kind", [EnvelopeKind.UPDATE, EnvelopeKind.SYNC_REPLY])
async def test_undecodable_envelopes_from_a_broken_node_are_dropped(kind: EnvelopeKind) -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        bad = encode_envelope(DocEnvelope(kind, "n9", b"\xff\xff\xff", "n2"))
        await n1.broker.publish(doc_channel(CANVAS), bad)
        await n1.broker.publish(doc_channel(CANVAS), b"\x07garbage")
        n1.edit("after")
        await eventually(lambda: "after" in n2.keys())
