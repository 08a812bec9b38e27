"""Cross-node fan-out benchmark: writer on node A, receivers on node B, against single-node fan-out.

    python tests/bench/run_crossnode.py                    # 100,500 receivers, 20/s, 15 s, x2
    python tests/bench/run_crossnode.py --quick            # 100 receivers, 5 s, once
    python tests/bench/run_crossnode.py --database-url postgresql+asyncpg://...   # a shared PostgreSQL

Every scenario starts a fresh private ``redis-server`` (free port, no persistence) and two fresh nodes
(``maily-realtime serve``) on it and on one shared database (a temp SQLite file unless
``--database-url``). ``single``: the writer and the receivers on node A (A still publishes every update
to Redis, B idles); ``cross``: the writer on A, the receivers on B, every update through Redis. The
order of the two alternates. Reported: latency p50/p99 from the writer's send to each receiver's
arrival, and CPU per delivered update of the receivers' node, of both nodes, and of Redis. Results go
to ``bench-results/crossnode-*.{json,md}``. Every wait is bounded; processes are stopped by handle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
sys.path.insert(0, str(BENCH_DIR))

import loadgen  # noqa: E402
from run_fanout import (  # noqa: E402
    OURS,
    _median,
    _say,
    environment,
    free_port,
    running_server,
    server_errors,
)

SINGLE, CROSS = "single", "cross"


@contextlib.contextmanager
def redis_process(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A private ``redis-server`` on a free port without persistence; killed by its handle at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    log_path = workdir / f"redis-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not listen within 10 s")
            time.sleep(0.02)
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # our own child, by its handle
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def two_nodes(
    workdir: Path, log_dir: Path, redis_url: str, database_url: str | None, max_peers: int
) -> AsyncIterator[tuple[Any, Any]]:
    stamp = f"{int(time.time() * 1000) % 10**8}"
    db_url = database_url or f"sqlite+aiosqlite:///{workdir / f'cross-{stamp}.db'}"
    common = {"MAILY_REDIS_URL": redis_url, "MAILY_DATABASE_URL": db_url}
    env_a = {**common, "MAILY_NODE_ID": f"a-{stamp}", "MAILY_AUTO_MIGRATE": "true"}
    env_b = {**common, "MAILY_NODE_ID": f"b-{stamp}", "MAILY_AUTO_MIGRATE": "false"}
    # A first: it migrates the shared database before B starts
    async with running_server(OURS, workdir, log_dir, max_peers=max_peers, extra_env=env_a) as node_a:
        async with running_server(OURS, workdir, log_dir, max_peers=max_peers, extra_env=env_b) as node_b:
            yield node_a, node_b


async def scenario(
    kind: str, receivers: int, args: argparse.Namespace, workdir: Path, log_dir: Path
) -> dict[str, Any]:
    canvas = f"x{receivers}-{kind}-{int(time.time() * 1000) % 10**8}"
    with redis_process(workdir) as (redis, redis_url):
        async with two_nodes(workdir, log_dir, redis_url, args.database_url, max(1000, receivers + 10)) as (
            node_a,
            node_b,
        ):
            receiving = node_b if kind == CROSS else node_a
            other = node_a if kind == CROSS else node_b
            result = await loadgen.run_fanout(
                receiving.url(canvas),
                node_a.url(canvas),
                receiving.proc.pid,
                receivers=receivers,
                rate=args.rate,
                duration_s=args.duration,
                workers=args.workers,
                other_pids={"other_node": other.proc.pid, "redis": redis.pid},
            )
            out = asdict(result)
            cpu = result.extra.get("cpu_s", {})
            delivered = result.delivered or None
            nodes_cpu = result.server_cpu_s + cpu.get("other_node", 0.0)
            out.update(
                scenario=kind,
                receiving_node_us_per_delivery=result.server_us_per_delivery,
                nodes_us_per_delivery=nodes_cpu / delivered * 1e6 if delivered else None,
                redis_us_per_delivery=cpu.get("redis", 0.0) / delivered * 1e6 if delivered else None,
                all_us_per_delivery=(nodes_cpu + cpu.get("redis", 0.0)) / delivered * 1e6
                if delivered
                else None,
                nodes_alive_after=node_a.proc.poll() is None and node_b.proc.poll() is None,
                server_log_errors=server_errors(node_a.log_path) + server_errors(node_b.log_path),
            )
            return out


METRICS: list[tuple[str, str, str]] = [
    ("connected", "receivers connected", "{:.0f}"),
    ("delivered_fraction", "delivered fraction", "{:.4f}"),
    ("latency_p50_ms", "latency p50 (ms)", "{:.2f}"),
    ("latency_p99_ms", "latency p99 (ms)", "{:.2f}"),
    ("latency_max_ms", "latency max (ms)", "{:.2f}"),
    ("receiving_node_us_per_delivery", "receivers' node CPU µs per delivery", "{:.1f}"),
    ("nodes_us_per_delivery", "both nodes CPU µs per delivery", "{:.1f}"),
    ("redis_us_per_delivery", "Redis CPU µs per delivery", "{:.2f}"),
    ("all_us_per_delivery", "nodes + Redis CPU µs per delivery", "{:.1f}"),
    ("server_cpu_ms_per_update", "receivers' node CPU ms per update", "{:.2f}"),
    ("receivers_lost", "receivers disconnected", "{:.0f}"),
]


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"# Cross-node fan-out benchmark {report['started_at']}",
        "",
        f"{cfg['rate']:g} updates/s for {cfg['duration']:g} s, one writer on node A; receivers on node A "
        f"(single) or node B (cross); Redis and two nodes fresh per run; repeats {cfg['repeats']} (median). "
        f"Machine: {report['env']['cpus']} CPUs, load before {report['env']['loadavg_before']}.",
        "",
    ]
    by_n: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for run in report["runs"]:
        by_n.setdefault(run["receivers"], {SINGLE: [], CROSS: []})[run["scenario"]].append(run)
    for n, runs in sorted(by_n.items()):
        lines += [
            f"## {n} receivers",
            "",
            "| metric | single | cross | cross - single |",
            "|---|---:|---:|---:|",
        ]
        for key, label, fmt in METRICS:
            single = _median([r.get(key) for r in runs[SINGLE]])
            cross = _median([r.get(key) for r in runs[CROSS]])
            diff = "-" if single is None or cross is None else fmt.format(cross - single)
            lines.append(
                f"| {label} | {'-' if single is None else fmt.format(single)} | "
                f"{'-' if cross is None else fmt.format(cross)} | {diff} |"
            )
        single_p99 = _median([r.get("latency_p99_ms") for r in runs[SINGLE]])
        cross_p99 = _median([r.get("latency_p99_ms") for r in runs[CROSS]])
        if single_p99 is not None and cross_p99 is not None:
            verdict = "met" if cross_p99 - single_p99 <= 10 else "NOT met"
            lines += ["", f"Target (cross p99 within 10 ms of single p99): {verdict}."]
        lines.append("")
    if report.get("failures"):
        lines += ["Failures:", *[f"- {f}" for f in report["failures"]], ""]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    out_dir = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = out_dir / "logs" / f"crossnode-{stamp}"
    report: dict[str, Any] = {
        "started_at": stamp,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "database_url")},
        "env": environment(),
        "runs": [],
        "failures": [],
    }
    with tempfile.TemporaryDirectory(prefix="maily-crossbench-") as tmp:
        workdir = Path(tmp)
        for rep in range(args.repeats):
            for k, n in enumerate(args.receivers):
                order = [SINGLE, CROSS] if (k + rep) % 2 == 0 else [CROSS, SINGLE]
                for kind in order:
                    if time.monotonic() - started > args.max_minutes * 60:
                        report["failures"].append(f"{kind}@{n}: skipped (time budget)")
                        continue
                    _say(f"{kind}: {n} receivers")
                    try:
                        result = await scenario(kind, n, args, workdir, log_dir)
                    except Exception as exc:  # one failed scenario must not lose the others
                        report["failures"].append(f"{kind}@{n}: {exc!r}")
                        _say(f"  failed: {exc!r}")
                        continue
                    report["runs"].append(result)
                    _say(
                        "  delivered {delivered_fraction:.4f}  p50 {latency_p50_ms} ms"
                        "  p99 {latency_p99_ms} ms  nodes {nodes_us_per_delivery} µs/delivery".format(
                            **result
                        )
                    )
    report["env"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    json_path = out_dir / f"crossnode-{stamp}.json"
    md_path = out_dir / f"crossnode-{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    md_path.write_text(text)
    shutil.copyfile(json_path, out_dir / "latest-crossnode.json")
    shutil.copyfile(md_path, out_dir / "latest-crossnode.md")
    sys.stdout.write(text + f"\nwritten: {json_path} {md_path} ({report['elapsed_s']} s)\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--receivers", default="100,500", help="comma-separated receiver counts")
    parser.add_argument("--rate", type=float, default=20.0, help="writer updates per second")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per (scenario, receivers)")
    parser.add_argument("--workers", type=int, default=2, help="receiver worker processes")
    parser.add_argument("--database-url", default=None, help="shared database (default: a temp SQLite file)")
    parser.add_argument("--quick", action="store_true", help="100 receivers, 5 s, once")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="skip runs once over this budget")
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args(argv)
    args.receivers = [int(x) for x in str(args.receivers).split(",") if x.strip()]
    if args.quick:
        args.receivers, args.duration, args.repeats = [100], 5.0, 1
    report = asyncio.run(run(args))
    return 1 if report["failures"] or not report["runs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
