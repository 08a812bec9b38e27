"""Fan-out benchmark: our server vs plain pycrdt-websocket, both started as subprocesses in one run.

    python tests/bench/run_fanout.py                       # full: 0,100,500,1000 receivers, 20/s, 15 s, x2
    python tests/bench/run_fanout.py --quick               # under 2 minutes
    python tests/bench/run_fanout.py --profile             # plus py-spy of ours at the largest fan-out

Each scenario gets a fresh server process on a free port (ours: ``maily-realtime serve`` on a temp
SQLite file; baseline: ``baseline_server.py``), and the order of the two alternates between
scenarios. Results go to ``bench-results/`` (JSON + Markdown) and stdout. Not a timed test: the
numbers depend on the machine and its noise; compare ours and baseline from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
sys.path.insert(0, str(BENCH_DIR))

import loadgen  # noqa: E402

JWT_SECRET = "bench-secret-" + "0123456789abcdef" * 2
OURS, BASELINE = "ours", "baseline"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mint_token() -> str:
    from app.auth import Authenticator
    from app.config import Settings

    settings = Settings(jwt_secret=JWT_SECRET, env="test", log_json=False)
    return Authenticator(settings).issue("bench", "bench", {"canvas:*": "write"}, ttl_s=3 * 3600)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    token: str | None

    def url(self, canvas: str) -> str:
        if self.name == OURS:
            return f"ws://127.0.0.1:{self.port}/yjs/{canvas}?token={self.token}"
        return f"ws://127.0.0.1:{self.port}/{canvas}"


@contextlib.asynccontextmanager
async def running_server(
    name: str,
    workdir: Path,
    log_dir: Path,
    *,
    db_path: Path | None = None,
    max_peers: int = 1000,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Server]:
    """Start ``name`` on a free port, wait until it accepts connections, stop it (SIGTERM) on exit.

    ``extra_env`` overrides our server's environment (``MAILY_REDIS_URL``, ``MAILY_DATABASE_URL``, ...).
    """
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a benchmark orchestrator; nothing else runs)
    log_path = log_dir / f"{name}-{port}.log"
    env = dict(os.environ)
    token = None
    if name == OURS:
        db_path = db_path or workdir / f"ours-{port}.db"
        env.update(
            MAILY_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
            MAILY_JWT_SECRET=JWT_SECRET,
            MAILY_LOG_LEVEL="WARNING",
            MAILY_ENV="dev",
            MAILY_MAX_PEERS_PER_ROOM=str(max_peers),
        )
        env.update(extra_env or {})
        exe = shutil.which("maily-realtime")
        cmd = [exe] if exe else [sys.executable, "-m", "app.cli"]
        cmd += ["serve", "--port", str(port)]
        token = mint_token()
    else:
        cmd = [sys.executable, str(BENCH_DIR / "baseline_server.py"), "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once; the server is polled below)
            cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(name, proc, port, log_path, token)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} before listening: {_tail(log_path)}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on {port} within 30 s: {_tail(log_path)}")
            await asyncio.sleep(0.1)
        yield server
    finally:
        stop_server(server)


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()  # our own child, by its handle
            server.proc.wait(timeout=10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def server_errors(path: Path) -> list[str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [
        line[:300]
        for line in text.splitlines()
        if "Traceback" in line or "ERROR" in line or '"error"' in line
    ][:10]


# -- scenarios --------------------------------------------------------------------------------


async def fanout_scenario(
    name: str,
    receivers: int,
    args: argparse.Namespace,
    workdir: Path,
    log_dir: Path,
    on_window: Callable[[Server], Any] | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    canvas = f"fan{receivers}-{name}-{int(time.time() * 1000) % 10**8}"
    async with running_server(name, workdir, log_dir, max_peers=max(1000, receivers + 10)) as server:
        url = server.url(canvas)
        result = await loadgen.run_fanout(
            url,
            url,
            server.proc.pid,
            receivers=receivers,
            rate=args.rate,
            duration_s=duration_s or args.duration,
            workers=args.workers,
            on_window=(lambda: on_window(server)) if on_window else None,
        )
        out = asdict(result)
        out["server"] = name
        out["server_system_pct"] = (
            100 * result.server_cpu_system_s / result.server_cpu_s if result.server_cpu_s else None
        )
        out["server_alive_after"] = server.proc.poll() is None
        out["server_log_errors"] = server_errors(server.log_path)
        return out


async def cold_sync_scenario(name: str, elements: int, workdir: Path, log_dir: Path) -> dict[str, Any]:
    """Sync of a populated canvas by a new client.

    Two canvases, A and B, are populated through one client each. Ours is then restarted, so that
    the first client of A measures a cold process loading the room from SQLite, B a warm process
    loading the room from SQLite, and A again a loaded room. The baseline has no storage: its rooms
    live in memory while the populating clients stay connected, so all three are in-memory syncs.
    """
    stamp = int(time.time() * 1000) % 10**8
    canvas_a, canvas_b = f"cold-a-{name}-{stamp}", f"cold-b-{name}-{stamp}"
    result = loadgen.ColdSyncResult(elements=elements)
    extra: dict[str, Any] = {}

    async def measure(server: Server) -> None:
        url_a = server.url(canvas_a)
        result.first_sync_ms, result.first_sync_elements, result.state_bytes = await loadgen.measure_sync(
            url_a
        )
        extra["room_load_sync_ms"], extra["room_load_sync_elements"], _ = await loadgen.measure_sync(
            server.url(canvas_b)
        )
        result.warm_sync_ms, result.warm_sync_elements, _ = await loadgen.measure_sync(url_a)

    if name == OURS:
        db_path = workdir / f"cold-{stamp}.db"
        async with running_server(name, workdir, log_dir, db_path=db_path) as server:
            for canvas in (canvas_a, canvas_b):
                writer, populate_s = await loadgen.populate(server.url(canvas), elements=elements)
                writer.close()
                result.populate_s = result.populate_s or populate_s
            await asyncio.sleep(0.2)
        # leaving the block stopped it gracefully (SIGTERM: the update log is flushed)
        async with running_server(name, workdir, log_dir, db_path=db_path) as server:
            result.restarted = True
            await measure(server)
    else:
        async with running_server(name, workdir, log_dir) as server:
            writers = []
            # the writers stay connected: plain pycrdt-websocket drops a room when its last client leaves
            try:
                for canvas in (canvas_a, canvas_b):
                    writer, populate_s = await loadgen.populate(server.url(canvas), elements=elements)
                    writers.append(writer)
                    result.populate_s = result.populate_s or populate_s
                await measure(server)
            finally:
                for writer in writers:
                    writer.close()
    out = asdict(result)
    out.update(extra)
    out["server"] = name
    return out


# -- profiling --------------------------------------------------------------------------------


class Profiler:
    """Runs ``py-spy record`` on the server when the measured window opens."""

    def __init__(
        self, out: Path, fmt: str, duration_s: int, *, rate: int = 100, native: bool = False
    ) -> None:
        self.out, self.fmt, self.duration_s, self.rate, self.native = out, fmt, duration_s, rate, native
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = out.with_suffix(out.suffix + ".log")

    def start(self, server: Server) -> None:
        cmd = [
            "py-spy",
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(self.duration_s),
            "--rate",
            str(self.rate),
            "--format",
            self.fmt,
            "--output",
            str(self.out),
        ]
        # --native needs the process paused while sampling (it perturbs more); the others do not
        cmd.append("--native" if self.native else "--nonblocking")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=self.duration_s + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(timeout=10)


# frames that mean "this thread is blocked" (native stacks; Python-only stacks omit idle threads)
_WAITING_FRAMES = (
    "epoll_wait",
    "epoll_pwait",
    "uv__io_poll",
    "PyThread_acquire_lock_timed",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "sem_wait",
    "sem_timedwait",
    "sem_clockwait",
)


def analyse_raw_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed stacks) output.

    Stacks of a blocked thread (epoll, lock and condition waits: seen in native mode only) are
    counted apart as ``waiting`` and left out of the shares.
    """
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        if any(frame.startswith(_WAITING_FRAMES) for frame in frames):
            waiting += count
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    return {
        "samples": total,
        "waiting_samples": waiting,
        "self": [(f, n, round(100 * n / total, 2)) for f, n in self_counts.most_common(top)] if total else [],
        "inclusive": [(f, n, round(100 * n / total, 2)) for f, n in incl_counts.most_common(top * 2)]
        if total
        else [],
    }


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``."""
    name, sep, location = frame.partition(" (")
    if not sep:
        return frame
    return f"{name} ({location.rsplit(':', 1)[0].rstrip(')')})"


# -- report -----------------------------------------------------------------------------------

METRICS: list[tuple[str, str, str]] = [
    ("connected", "receivers connected", "{:.0f}"),
    ("connect_wall_s", "connect all receivers, wall (s)", "{:.2f}"),
    ("connect_p50_ms", "connect+sync per receiver p50 (ms)", "{:.1f}"),
    ("connect_p99_ms", "connect+sync per receiver p99 (ms)", "{:.1f}"),
    ("latency_p50_ms", "fan-out latency p50 (ms)", "{:.2f}"),
    ("latency_p99_ms", "fan-out latency p99 (ms)", "{:.2f}"),
    ("delivered_fraction", "delivered fraction", "{:.4f}"),
    ("server_cpu_per_100k", "server CPU s per 100k deliveries", "{:.2f}"),
    ("server_us_per_delivery", "server CPU µs per delivery", "{:.1f}"),
    ("server_cpu_ms_per_update", "server CPU ms per update sent", "{:.2f}"),
    ("server_system_pct", "server CPU in kernel (% of CPU)", "{:.0f}"),
    ("server_idle_cpu_pct", "server CPU, receivers idle (% of a core)", "{:.1f}"),
    ("server_cpu_connect_s", "server CPU s to accept all receivers", "{:.2f}"),
    ("rss_before_connect_mb", "server RSS before connect (MB)", "{:.1f}"),
    ("rss_idle_mb", "server RSS, receivers idle (MB)", "{:.1f}"),
    ("rss_after_mb", "server RSS after run (MB)", "{:.1f}"),
    ("rss_per_idle_conn_kb", "RSS per idle connection (KB)", "{:.1f}"),
    ("receivers_lost", "receivers disconnected during run", "{:.0f}"),
    ("client_cpu_pct", "load generator CPU in window (%)", "{:.0f}"),
]

COLD_METRICS: list[tuple[str, str, str]] = [
    ("first_sync_ms", "first client after restart, canvas A (ms) [baseline: in memory]", "{:.1f}"),
    ("room_load_sync_ms", "first client of canvas B, process warm (ms) [baseline: in memory]", "{:.1f}"),
    ("warm_sync_ms", "next client of canvas A, room loaded (ms)", "{:.1f}"),
    ("state_bytes", "SYNC_STEP2 size (bytes)", "{:.0f}"),
    ("first_sync_elements", "elements in first sync", "{:.0f}"),
    ("populate_s", "populate through one client (s)", "{:.2f}"),
]


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _ratio(ours: float | None, base: float | None) -> str:
    if ours is None or base is None or base == 0:
        return "-"
    return f"{ours / base:.2f}"


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"# Fan-out benchmark {report['started_at']}",
        "",
        f"{cfg['rate']:g} updates/s for {cfg['duration']:g} s, one writer, receivers on "
        f"{cfg['workers']} worker processes, repeats {cfg['repeats']} (median shown). "
        f"Machine: {report['env']['cpus']} CPUs, load before {report['env']['loadavg_before']}.",
        "",
    ]
    by_n: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for run in report["fanout"]:
        by_n.setdefault(run["receivers"], {OURS: [], BASELINE: []})[run["server"]].append(run)
    for n, runs in sorted(by_n.items()):
        lines += [
            f"## {n} receivers",
            "",
            "| metric | ours | baseline | ours / baseline |",
            "|---|---:|---:|---:|",
        ]
        for key, label, fmt in METRICS:
            ours = _median([r.get(key) for r in runs[OURS]])
            base = _median([r.get(key) for r in runs[BASELINE]])
            lines.append(f"| {label} | {_fmt(ours, fmt)} | {_fmt(base, fmt)} | {_ratio(ours, base)} |")
        lines.append("")
    if report.get("cold_sync"):
        cold = {r["server"]: r for r in report["cold_sync"]}
        elements = next(iter(cold.values()))["elements"]
        lines += [
            f"## Sync of a {elements}-element canvas",
            "",
            "| metric | ours | baseline | ours / baseline |",
            "|---|---:|---:|---:|",
        ]
        for key, label, fmt in COLD_METRICS:
            ours = cold.get(OURS, {}).get(key)
            base = cold.get(BASELINE, {}).get(key)
            lines.append(f"| {label} | {_fmt(ours, fmt)} | {_fmt(base, fmt)} | {_ratio(ours, base)} |")
        lines.append("")
    profile = report.get("profile")
    if profile:
        lines += _profile_markdown(profile)
    if report.get("skipped"):
        lines += ["Skipped (time budget): " + ", ".join(report["skipped"]), ""]
    if report.get("failures"):
        lines += ["Failures:", *[f"- {f}" for f in report["failures"]], ""]
    return "\n".join(lines)


def _profile_markdown(profile: dict[str, Any]) -> list[str]:
    """Top functions of the py-spy runs; µs per delivery = share of samples x that run's CPU per delivery.

    py-spy samples a thread whenever it is not idle (running, runnable, or in a syscall), so the
    shares are of active wall time; scaling by the measured CPU per delivery is an estimate.
    """
    lines: list[str] = []
    for key, title in (("analysis", "Python frames"), ("native_analysis", "with native frames (--native)")):
        analysis = profile.get(key)
        if not analysis or not analysis["samples"]:
            continue
        run = profile.get("runs", {}).get("native" if key == "native_analysis" else "raw", {})
        unit = "delivery" if run.get("server_us_per_delivery") else "update"
        us = run.get("server_us_per_delivery") or (run.get("server_cpu_ms_per_update") or 0.0) * 1000
        lines += [
            f"## py-spy, ours, {profile['receivers']} receivers, {title}: {analysis['samples']} samples, "
            f"{us:.1f} µs CPU per {unit} in the profiled run",
            "",
            f"| self % | ≈ µs per {unit} | function |",
            "|---:|---:|---|",
        ]
        lines += [f"| {pct:.1f} | {pct * us / 100:.2f} | `{fn}` |" for fn, _, pct in analysis["self"][:15]]
        lines += ["", "| inclusive % | function |", "|---:|---|"]
        lines += [f"| {pct:.1f} | `{fn}` |" for fn, _, pct in analysis["inclusive"][:30]]
        lines.append("")
    return lines


def environment() -> dict[str, Any]:
    versions = {}
    for dist in ("uvicorn", "websockets", "pycrdt", "pycrdt-websocket", "fastapi", "starlette"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "app", "crdt", "storage"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.splitlines()
    return {
        "server_tree_changes": changed,  # uncommitted server code the run measured
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "commit": commit,
    }


# -- main -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    budget_s = args.max_minutes * 60
    out_dir = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = out_dir / "logs" / stamp
    report: dict[str, Any] = {
        "started_at": stamp,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "env": environment(),
        "fanout": [],
        "cold_sync": [],
        "skipped": [],
        "failures": [],
    }
    with tempfile.TemporaryDirectory(prefix="maily-bench-") as tmp:
        workdir = Path(tmp)
        plan: list[tuple[str, int]] = []
        for rep in range(args.repeats):
            for k, n in enumerate(args.receivers):
                order = [OURS, BASELINE] if (k + rep) % 2 == 0 else [BASELINE, OURS]
                plan += [(name, n) for name in order]
        for name, n in plan:
            if time.monotonic() - started > budget_s:
                report["skipped"].append(f"{name}@{n}")
                continue
            _say(f"fan-out: {name} with {n} receivers")
            try:
                result = await fanout_scenario(name, n, args, workdir, log_dir)
            except Exception as exc:  # one failed scenario must not lose the others
                report["failures"].append(f"{name}@{n}: {exc!r}")
                _say(f"  failed: {exc!r}")
                continue
            report["fanout"].append(result)
            _say(
                "  delivered {delivered_fraction:.4f}  p50 {latency_p50_ms} ms  p99 {latency_p99_ms} ms  "
                "{server_us_per_delivery} µs/delivery  lost {receivers_lost}".format(**result)
            )
        if args.cold_elements:
            for name in (BASELINE, OURS) if args.repeats % 2 else (OURS, BASELINE):
                _say(f"cold sync: {name}, {args.cold_elements} elements")
                try:
                    report["cold_sync"].append(
                        await cold_sync_scenario(name, args.cold_elements, workdir, log_dir)
                    )
                except Exception as exc:
                    report["failures"].append(f"cold sync {name}: {exc!r}")
                    _say(f"  failed: {exc!r}")
        if args.profile and time.monotonic() - started > budget_s:
            report["skipped"].append("profile")
        elif args.profile:
            n = max(args.receivers)
            out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
            base, rate = out_dir / f"profile-ours-{n}-{stamp}", args.profile_rate
            raw = Profiler(base.with_suffix(".txt"), "raw", args.profile_s, rate=rate)
            native = Profiler(Path(f"{base}-native.txt"), "raw", args.profile_s, rate=rate, native=True)
            svg = Profiler(base.with_suffix(".svg"), "flamegraph", args.profile_s, rate=rate)
            profile: dict[str, Any] = {"receivers": n, "duration_s": args.profile_s}
            profilers = [("raw", raw), ("flamegraph", svg)] + (
                [("native", native)] if args.profile_native else []
            )
            for key, profiler in profilers:
                _say(f"profile: ours with {n} receivers, py-spy {key}")
                try:
                    run_result = await fanout_scenario(
                        OURS,
                        n,
                        args,
                        workdir,
                        log_dir,
                        on_window=profiler.start,
                        duration_s=max(args.duration, args.profile_s + 2),
                    )
                finally:
                    profiler.wait()
                profile.setdefault("runs", {})[key] = run_result
                profile[f"{key}_file"] = str(profiler.out)
            profile["run"] = profile["runs"]["raw"]
            if raw.out.exists():
                profile["analysis"] = analyse_raw_profile(raw.out)
            if native.out.exists():
                profile["native_analysis"] = analyse_raw_profile(native.out)
            report["profile"] = profile
    report["env"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    json_path = out_dir / f"fanout-{stamp}.json"
    md_path = out_dir / f"fanout-{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    md_path.write_text(text)
    shutil.copyfile(json_path, out_dir / "latest.json")
    shutil.copyfile(md_path, out_dir / "latest.md")
    sys.stdout.write(text + f"\nwritten: {json_path} {md_path} ({report['elapsed_s']} s)\n")
    return report


def _say(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--receivers",
        default="0,100,500,1000",
        help="comma-separated receiver counts; 0 = the writer alone (fixed cost per update)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="writer updates per second")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per (server, receivers); medians reported"
    )
    parser.add_argument("--workers", type=int, default=2, help="receiver worker processes")
    parser.add_argument("--cold-elements", type=int, default=10_000, help="0 skips the cold-sync scenario")
    parser.add_argument("--profile", action="store_true", help="py-spy our server at the largest fan-out")
    parser.add_argument("--profile-s", type=int, default=10)
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="one more profiled run with py-spy --native (pauses the server)",
    )
    parser.add_argument("--quick", action="store_true", help="100 receivers, 5 s, 2,000-element cold sync")
    parser.add_argument(
        "--max-minutes", type=float, default=15.0, help="skip scenarios once over this budget"
    )
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args(argv)
    args.receivers = [int(x) for x in str(args.receivers).split(",") if x.strip()]
    if args.quick:
        args.receivers, args.duration, args.repeats = [100], 5.0, 1
        args.cold_elements = min(args.cold_elements, 2000) if args.cold_elements else 0
        args.max_minutes = min(args.max_minutes, 2.0)
    report = asyncio.run(run(args))
    return 1 if report["failures"] or not report["fanout"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
