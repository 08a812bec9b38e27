"""Load generator for the fan-out benchmark: cheap y-websocket receivers, one paced writer, cold sync.

Receivers are raw asyncio Protocols (minimal RFC 6455 client handshake, frame headers parsed, payload
inspected only to classify y-sync messages) spread over worker processes; the writer sends pre-built
Yjs updates at a fixed rate from the parent process. Every loop here is bounded in time and count.

Usable as a module (``run_fanout``, ``run_cold_sync``) and as a CLI against an already running server:

    python tests/bench/loadgen.py fanout --url ws://127.0.0.1:8000/yjs/c1?token=JWT --receivers 100 --pid PID
    python tests/bench/loadgen.py coldsync --url ws://127.0.0.1:8001/c2 --elements 10000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil

# y-websocket messages (y-protocols sync.js): varUint type, varUint sync type, varBytes payload
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"  # our state vector: the empty document
SYNC_STEP2_EMPTY = b"\x00\x01\x02\x00\x00"  # what a fresh Yjs client answers to the server's step 1
SYNC_UPDATE_EMPTY = b"\x00\x02\x02\x00\x00"

_OP_CONT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x2, 0x8, 0x9, 0xA

now = time.monotonic  # CLOCK_MONOTONIC: system-wide on Linux, so comparable across our processes


# -- wire helpers -----------------------------------------------------------------------------


def var_uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def sync_update_message(update: bytes) -> bytes:
    return b"\x00\x02" + var_uint(len(update)) + update


def client_frame(payload: bytes, opcode: int = _OP_BINARY) -> bytes:
    """A masked, unfragmented client frame (RFC 6455 section 5.3)."""
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 1 << 16:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    mask = secrets.token_bytes(4)
    if not n:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def read_var_uint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


# -- the client protocol ----------------------------------------------------------------------


class WsClient(asyncio.Protocol):
    """A minimal y-websocket client connection.

    Answers the server's SYNC_STEP1 with an empty SYNC_STEP2 (as a fresh Yjs client does), sends its
    own SYNC_STEP1 on open, answers pings, and records the arrival time and CRC-32 of every non-empty
    SYNC_UPDATE. ``synced`` resolves with the arrival time of the server's SYNC_STEP2.
    """

    def __init__(self, host: str, target: str, *, record: bool = True, keep_step2: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.synced: asyncio.Future[float] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.record = record
        self.keep_step2 = keep_step2
        self.step2: bytes | None = None
        self.arrivals: list[float] = []
        self.crcs: list[int] = []
        self.close_code: int | None = None
        self.other_frames = 0
        self._buf = bytearray()
        self._fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(f"closed before sync (code {self.close_code})"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        t = now()
        buf = self._buf
        if not self.upgraded:
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail("oversized HTTP response")
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(f"upgrade refused: {status.decode(errors='replace')}")
                return
            self.upgraded = True
            del buf[: end + 4]
            self.transport.write(client_frame(SYNC_STEP1_EMPTY))  # type: ignore[union-attr]
            if not buf:
                return
            data = bytes(buf)
            buf.clear()
        elif buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        pos = self._parse(data, t)
        if pos < len(data):
            buf += memoryview(data)[pos:]

    def _parse(self, data: bytes, t: float) -> int:
        """Handle every complete frame in ``data``; returns where the incomplete tail starts."""
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            start = pos + head
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if b0 & 0x80 and opcode == _OP_BINARY:
                self._message(data, start, end, t)
            else:
                self._control(opcode, b0 & 0x80, data[start:end], t)
            pos = end
        return pos

    def _message(self, data: bytes, start: int, end: int, t: float) -> None:
        if end - start < 2 or data[start] != 0:
            self.other_frames += 1  # awareness, auth, ...
            return
        sync_type = data[start + 1]
        if sync_type == 2:
            if self.record and data[start:end] != SYNC_UPDATE_EMPTY:
                self.arrivals.append(t)
                self.crcs.append(zlib.crc32(memoryview(data)[start:end]))
        elif sync_type == 0:
            self.transport.write(client_frame(SYNC_STEP2_EMPTY))  # type: ignore[union-attr]
        elif sync_type == 1:
            if self.keep_step2:
                self.step2 = data[start:end]
            if not self.synced.done():
                self.synced.set_result(t)

    def _control(self, opcode: int, fin: int, payload: bytes, t: float) -> None:
        if opcode == _OP_PING:
            self.transport.write(client_frame(payload, _OP_PONG))  # type: ignore[union-attr]
        elif opcode == _OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            with contextlib.suppress(Exception):
                self.transport.write(client_frame(payload[:2], _OP_CLOSE))  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
        elif opcode in (_OP_BINARY, _OP_CONT):  # fragmented message (servers here never fragment)
            self._fragments.append(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments.clear()
                self._message(whole, 0, len(whole), t)

    def _fail(self, reason: str) -> None:
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(reason))
        self.transport.close()  # type: ignore[union-attr]

    def send(self, payload: bytes) -> None:
        self.transport.write(client_frame(payload))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.write(client_frame(b"\x03\xe8", _OP_CLOSE))
            self.transport.close()


async def open_client(url: str, *, timeout_s: float = 30.0, **kwargs: Any) -> tuple[WsClient, float, float]:
    """Connect to ``url`` and wait for the initial sync (the server's SYNC_STEP2).

    Returns the client, the start time and the sync time (``time.monotonic``).
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    started = now()
    async with asyncio.timeout(timeout_s):
        _, client = await loop.create_connection(
            lambda: WsClient(parts.netloc, target, **kwargs), parts.hostname, parts.port
        )
        try:
            synced = await client.synced
        except BaseException:
            client.close()
            raise
    return client, started, synced


# -- Yjs content ------------------------------------------------------------------------------


def element_fields(i: int) -> dict[str, Any]:
    """One canvas element (DESIGN.md schema), realistic in size."""
    return {
        "id": f"el{i}",
        "type": ("rect", "ellipse", "text", "line", "image", "frame")[i % 6],
        "x": float(i % 1000),
        "y": float(i // 1000 * 40),
        "width": 120.0,
        "height": 80.0,
        "rotation": 0.0,
        "fill": f"#{(i * 2654435761) % 0xFFFFFF:06x}",
        "stroke": "#222222",
        "text": f"element {i}" if i % 6 == 2 else "",
        "fontSize": 14,
        "layerId": "layer-1",
        "z": i,
        "createdBy": "bench",
        "updatedAt": 1_700_000_000_000 + i,
    }


def _capture_updates(build: Callable[[Any], None]) -> list[bytes]:
    from pycrdt import Doc

    doc = Doc()
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    build(doc)
    doc.unobserve(subscription)
    return updates


def fanout_updates(count: int, *, elements: int = 20) -> list[bytes]:
    """``count`` updates of one writer: the first creates ``elements`` elements, the rest move one each."""
    from pycrdt import Map

    def build(doc: Any) -> None:
        root = doc.get("elements", type=Map)
        with doc.transaction():
            for i in range(elements):
                root[f"el{i}"] = Map(element_fields(i))
        for k in range(1, count):
            element = root[f"el{k % elements}"]
            with doc.transaction():
                element["x"] = float(k)
                element["y"] = float(k % 500)

    return _capture_updates(build)


def populate_updates(elements: int, per_update: int) -> list[bytes]:
    """Updates that together create ``elements`` elements, ``per_update`` per transaction."""
    from pycrdt import Map

    def build(doc: Any) -> None:
        root = doc.get("elements", type=Map)
        for start in range(0, elements, per_update):
            with doc.transaction():
                for i in range(start, min(start + per_update, elements)):
                    root[f"el{i}"] = Map(element_fields(i))

    return _capture_updates(build)


def server_side_messages(updates: list[bytes]) -> list[bytes]:
    """The SYNC_UPDATE messages a server fans out for ``updates``: its document re-encodes each one."""
    from pycrdt import Doc

    doc = Doc()
    out: list[bytes] = []
    subscription = doc.observe(lambda event: out.append(event.update))
    for update in updates:
        doc.apply_update(update)
    doc.unobserve(subscription)
    if len(out) != len(updates):
        raise RuntimeError(f"expected one transaction per update, got {len(out)} for {len(updates)}")
    return [sync_update_message(update) for update in out]


def count_elements(step2_message: bytes) -> int:
    from pycrdt import Doc, Map

    length, pos = read_var_uint(step2_message, 2)
    doc = Doc()
    doc.apply_update(step2_message[pos : pos + length])
    return len(doc.get("elements", type=Map))


# -- receiver workers -------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def _worker_main(conn: Any, url: str, count: int, concurrency: int, deadline_s: float) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker(conn, url, count, concurrency, deadline_s))


async def _worker(conn: Any, url: str, count: int, concurrency: int, deadline_s: float) -> None:
    """Connect ``count`` receivers, then answer the parent's commands until ``close`` or the deadline."""
    loop = asyncio.get_running_loop()
    end = now() + deadline_s
    clients: list[WsClient] = []
    connect_s: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                client, started, synced = await open_client(url, timeout_s=60)
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(repr(exc))
                return
            clients.append(client)
            connect_s.append(synced - started)

    async def command(timeout_s: float) -> Any:
        ready = await loop.run_in_executor(None, conn.poll, timeout_s)
        return conn.recv() if ready else None

    first = await command(max(1.0, end - now()))
    if first == "connect":
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(one())
        conn.send(
            {
                "connected": len(clients),
                "errors": errors[:5],
                "error_count": len(errors),
                "connect_s": connect_s,
            }
        )
    while now() < end:
        cmd = await command(min(5.0, max(0.1, end - now())))
        if cmd is None:
            continue
        if cmd == "count":
            conn.send(sum(len(c.arrivals) for c in clients))
        elif cmd == "report":
            conn.send(
                {
                    "crcs": [c.crcs for c in clients],
                    "arrivals": [c.arrivals for c in clients],
                    "lost": sum(1 for c in clients if c.lost.done()),
                    "close_codes": [c.close_code for c in clients if c.close_code is not None],
                    "other_frames": sum(c.other_frames for c in clients),
                }
            )
        elif cmd == "close":
            break
    for client in clients:
        client.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(c.lost for c in clients))
    conn.send("closed")


class ReceiverPool:
    """``count`` receivers on ``url`` spread over ``workers`` processes (spawned, so nothing leaks in)."""

    def __init__(
        self, url: str, count: int, *, workers: int = 2, concurrency: int = 50, deadline_s: float = 600
    ):
        ctx = multiprocessing.get_context("spawn")
        self.count = count
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
        for share in shares:
            if share == 0:
                continue
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(child, url, share, concurrency, deadline_s), daemon=True
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def _ask(self, message: Any, timeout_s: float) -> list[Any]:
        loop = asyncio.get_running_loop()

        def ask(pipe: Any) -> Any:
            pipe.send(message)
            if not pipe.poll(timeout_s):
                raise TimeoutError(f"receiver worker did not answer {message!r} within {timeout_s}s")
            return pipe.recv()

        return await asyncio.gather(*(loop.run_in_executor(None, ask, pipe) for pipe in self.pipes))

    async def connect(self, timeout_s: float = 180) -> dict[str, Any]:
        started = now()
        answers = await self._ask("connect", timeout_s)
        wall = now() - started
        times = sorted(t for a in answers for t in a["connect_s"])
        return {
            "connected": sum(a["connected"] for a in answers),
            "connect_errors": sum(a["error_count"] for a in answers),
            "connect_error_samples": [e for a in answers for e in a["errors"]][:5],
            "connect_wall_s": wall,
            "connect_p50_ms": _ms(_percentile(times, 50)),
            "connect_p99_ms": _ms(_percentile(times, 99)),
        }

    async def delivered(self) -> int:
        return sum(await self._ask("count", 30))

    async def report(self) -> list[dict[str, Any]]:
        return await self._ask("report", 60)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ask("close", 15)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()  # our own child, by its handle
                proc.join(timeout=5)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# -- measurements -----------------------------------------------------------------------------


@dataclass
class FanoutResult:
    receivers: int
    rate: float
    duration_s: float
    connected: int = 0
    connect_errors: int = 0
    connect_wall_s: float = 0.0
    connect_p50_ms: float | None = None
    connect_p99_ms: float | None = None
    sent: int = 0
    delivered: int = 0
    delivered_fraction: float = 0.0
    unknown_frames: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    server_cpu_s: float = 0.0
    server_cpu_user_s: float = 0.0
    server_cpu_system_s: float = 0.0
    server_cpu_ms_per_update: float | None = None
    server_idle_cpu_pct: float | None = None
    server_cpu_per_100k: float | None = None
    server_us_per_delivery: float | None = None
    server_cpu_connect_s: float = 0.0
    rss_before_connect_mb: float = 0.0
    rss_idle_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_per_idle_conn_kb: float | None = None
    receivers_lost: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    send_lag_p99_ms: float | None = None
    client_cpu_pct: float | None = None
    window_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


async def run_fanout(
    receiver_url: str,
    writer_url: str,
    server_pid: int,
    *,
    receivers: int,
    rate: float = 20.0,
    duration_s: float = 15.0,
    warmup_s: float = 1.0,
    idle_s: float = 2.0,
    max_drain_s: float = 5.0,
    workers: int = 2,
    on_window: Callable[[], Any] | None = None,
    other_pids: dict[str, int] | None = None,
) -> FanoutResult:
    """One fan-out run against a running server on a fresh canvas.

    The writer connects first; ``receivers`` receivers connect and sync; the writer sends
    ``warmup_s * rate`` updates (not measured), then ``duration_s * rate`` updates at ``rate``.
    The measured window runs from the first timed send until every receiver has every update or
    deliveries stop for 1 s (at most ``max_drain_s`` after the last send). ``on_window`` is called
    when the window opens (the profiler hook of ``run_fanout.py``). ``other_pids`` are more processes
    (the writer's node, Redis) whose CPU in the window goes to ``extra["cpu_s"]`` by name.
    """
    server = psutil.Process(server_pid)
    result = FanoutResult(receivers=receivers, rate=rate, duration_s=duration_s)
    warmup = max(1, round(warmup_s * rate))
    timed = max(1, round(duration_s * rate))
    updates = fanout_updates(warmup + timed)
    frames = [client_frame(sync_update_message(u)) for u in updates]
    index_of: dict[int, int] = {}
    for i, message in enumerate(server_side_messages(updates)):
        index_of[zlib.crc32(message)] = i
    for i, update in enumerate(updates):
        index_of.setdefault(zlib.crc32(sync_update_message(update)), i)

    writer, _, _ = await open_client(writer_url, record=False)
    pool: ReceiverPool | None = None
    try:
        await asyncio.sleep(0.2)
        result.rss_before_connect_mb = _rss_mb(server)
        cpu_connect0 = _cpu_s([server])
        pool = ReceiverPool(receiver_url, receivers, workers=workers)
        connect = await pool.connect()
        result.server_cpu_connect_s = _cpu_s([server]) - cpu_connect0
        for key in ("connected", "connect_errors", "connect_wall_s", "connect_p50_ms", "connect_p99_ms"):
            setattr(result, key, connect[key])
        if connect["connect_error_samples"]:
            result.extra["connect_error_samples"] = connect["connect_error_samples"]
        idle_cpu0, idle_t0 = _cpu_s([server]), now()
        await asyncio.sleep(idle_s)
        result.server_idle_cpu_pct = round(100 * (_cpu_s([server]) - idle_cpu0) / (now() - idle_t0), 2)
        result.rss_idle_mb = _rss_mb(server)
        if result.connected:
            result.rss_per_idle_conn_kb = (
                (result.rss_idle_mb - result.rss_before_connect_mb) * 1024 / result.connected
            )

        send_times: list[float] = []
        lags: list[float] = []

        async def send(batch: range) -> None:
            t0 = now() + 0.01
            for k, i in enumerate(batch):
                target = t0 + k / rate
                delay = target - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = now()
                lags.append(max(0.0, t - target))
                send_times.append(t)
                writer.transport.write(frames[i])  # type: ignore[union-attr]

        await send(range(warmup))
        await asyncio.sleep(0.5)
        lags.clear()
        clients = [psutil.Process(pid) for pid in pool.pids] + [psutil.Process()]
        others = {name: psutil.Process(pid) for name, pid in (other_pids or {}).items()}
        others_cpu0 = {name: _cpu_s([proc]) for name, proc in others.items()}
        cpu0, client_cpu0, t_open = server.cpu_times(), _cpu_s(clients), now()
        if on_window is not None:
            on_window()
        await send(range(warmup, warmup + timed))
        last_send = now()
        expected = (warmup + timed) * result.connected
        previous, still_since = -1, now()
        while now() - last_send < max_drain_s:
            await asyncio.sleep(0.25)
            got = await pool.delivered()
            if got >= expected:
                break
            if got != previous:
                previous, still_since = got, now()
            elif now() - still_since >= 1.0:
                break
        t_close = now()
        cpu1, client_cpu1 = server.cpu_times(), _cpu_s(clients)
        result.extra["cpu_s"] = {name: _cpu_s([proc]) - others_cpu0[name] for name, proc in others.items()}
        result.window_s = t_close - t_open
        result.rss_after_mb = _rss_mb(server)
        result.server_cpu_user_s = cpu1.user - cpu0.user
        result.server_cpu_system_s = cpu1.system - cpu0.system
        result.server_cpu_s = result.server_cpu_user_s + result.server_cpu_system_s
        result.server_cpu_ms_per_update = result.server_cpu_s / timed * 1000
        result.client_cpu_pct = round(100 * (client_cpu1 - client_cpu0) / result.window_s, 1)
        lags.sort()
        result.send_lag_p99_ms = _ms(_percentile(lags, 99))

        reports = await pool.report()
        latencies: list[float] = []
        delivered = unknown = 0
        codes: dict[str, int] = {}
        for report in reports:
            result.receivers_lost += report["lost"]
            for code in report["close_codes"]:
                codes[str(code)] = codes.get(str(code), 0) + 1
            for crcs, arrivals in zip(report["crcs"], report["arrivals"], strict=True):
                for crc, t in zip(crcs, arrivals, strict=True):
                    i = index_of.get(crc)
                    if i is None:
                        unknown += 1
                    elif i >= warmup and t <= t_close:
                        delivered += 1
                        latencies.append(t - send_times[i])
        latencies.sort()
        result.close_codes = codes
        result.sent = timed
        result.delivered = delivered
        result.unknown_frames = unknown
        result.delivered_fraction = delivered / (timed * receivers) if receivers else 0.0
        result.latency_p50_ms = _ms(_percentile(latencies, 50))
        result.latency_p99_ms = _ms(_percentile(latencies, 99))
        result.latency_max_ms = _ms(latencies[-1] if latencies else None)
        if delivered:
            result.server_cpu_per_100k = result.server_cpu_s / delivered * 100_000
            result.server_us_per_delivery = result.server_cpu_s / delivered * 1e6
        result.extra["mean_latency_ms"] = _ms(statistics.fmean(latencies)) if latencies else None
    finally:
        if pool is not None:
            await pool.close()
        writer.close()
    return result


@dataclass
class ColdSyncResult:
    elements: int
    state_bytes: int = 0
    populate_s: float = 0.0
    first_sync_ms: float = 0.0
    first_sync_elements: int = 0
    warm_sync_ms: float = 0.0
    warm_sync_elements: int = 0
    restarted: bool = False


async def populate(url: str, *, elements: int, per_update: int = 100) -> tuple[WsClient, float]:
    """Write ``elements`` elements through one client; returns it (still open) once the server has all.

    Completion is checked by a second client whose initial sync must contain every element.
    """
    started = now()
    writer, _, _ = await open_client(url, record=False)
    for update in populate_updates(elements, per_update):
        writer.send(sync_update_message(update))
        await asyncio.sleep(0)  # let the transport flush between frames
    for _ in range(100):  # bounded: about 20 s
        check, _, _ = await open_client(url, record=False, keep_step2=True, timeout_s=60)
        check.close()
        if check.step2 is not None and count_elements(check.step2) >= elements:
            break
        await asyncio.sleep(0.2)
    else:
        writer.close()
        raise RuntimeError(f"server never reported all {elements} elements")
    return writer, now() - started


async def measure_sync(url: str) -> tuple[float, int, int]:
    """Time from TCP connect to the complete SYNC_STEP2 for one new client; returns (ms, elements, bytes)."""
    client, started, synced = await open_client(url, record=False, keep_step2=True, timeout_s=60)
    client.close()
    step2 = client.step2 or b""
    return (synced - started) * 1000, count_elements(step2), len(step2)


# -- CLI --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fan = commands.add_parser("fanout", help="one fan-out run against a running server")
    fan.add_argument("--url", required=True, help="receiver URL, e.g. ws://127.0.0.1:8000/yjs/c1?token=JWT")
    fan.add_argument("--writer-url", default=None, help="default: --url")
    fan.add_argument("--pid", type=int, required=True, help="server process id (CPU and RSS)")
    fan.add_argument("--receivers", type=int, default=100)
    fan.add_argument("--rate", type=float, default=20.0)
    fan.add_argument("--duration", type=float, default=15.0)
    fan.add_argument("--workers", type=int, default=2)
    cold = commands.add_parser("coldsync", help="populate a canvas, then time a new client's sync")
    cold.add_argument("--url", required=True)
    cold.add_argument("--elements", type=int, default=10_000)
    args = parser.parse_args(argv)
    if args.command == "fanout":
        fan_result = asyncio.run(
            run_fanout(
                args.url,
                args.writer_url or args.url,
                args.pid,
                receivers=args.receivers,
                rate=args.rate,
                duration_s=args.duration,
                workers=args.workers,
            )
        )
        sys.stdout.write(json.dumps(asdict(fan_result), indent=2) + "\n")
        return 0

    async def cold_run() -> ColdSyncResult:
        out = ColdSyncResult(elements=args.elements)
        writer, out.populate_s = await populate(args.url, elements=args.elements)
        try:
            out.first_sync_ms, out.first_sync_elements, out.state_bytes = await measure_sync(args.url)
            out.warm_sync_ms, out.warm_sync_elements, _ = await measure_sync(args.url)
        finally:
            writer.close()
        return out

    sys.stdout.write(json.dumps(asdict(asyncio.run(cold_run())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
