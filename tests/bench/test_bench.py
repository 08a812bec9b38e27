"""The quick fan-out benchmark as a sanity check (marker ``bench``, excluded from the default run).

    python -m pytest -m bench tests/bench -q -p no:logging

Asserts only that both servers delivered updates and that the result files were written: the
numbers themselves depend on the machine and are read from ``bench-results/``, not asserted.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

BENCH_DIR = Path(__file__).resolve().parent
log = logging.getLogger(__name__)


def test_quick_fanout_benchmark(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run_fanout.py"), "--quick", "--out", str(tmp_path)],
        cwd=BENCH_DIR.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"run_fanout.py exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    result_file = tmp_path / "latest.json"
    assert result_file.exists(), f"no result file in {tmp_path}: {sorted(p.name for p in tmp_path.iterdir())}"
    assert (tmp_path / "latest.md").exists()
    report = json.loads(result_file.read_text())
    delivered = {run["server"]: run["delivered"] for run in report["fanout"]}
    assert delivered.get("ours", 0) > 0, f"our server delivered nothing: {report['fanout']}"
    assert delivered.get("baseline", 0) > 0, f"the baseline delivered nothing: {report['fanout']}"
    cold = {run["server"]: run for run in report["cold_sync"]}
    assert {"ours", "baseline"} <= cold.keys(), f"cold sync missing: {report['failures']}"
    for run in cold.values():
        assert run["first_sync_elements"] == run["elements"], f"incomplete sync: {run}"
    log.info("quick fan-out benchmark: %s", proc.stdout.strip().splitlines()[-1])


def test_quick_crossnode_benchmark(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run_crossnode.py"), "--quick", "--out", str(tmp_path)],
        cwd=BENCH_DIR.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"run_crossnode.py exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads((tmp_path / "latest-crossnode.json").read_text())
    runs = {run["scenario"]: run for run in report["runs"]}
    assert {"single", "cross"} <= runs.keys(), report["failures"]
    for run in runs.values():
        assert run["delivered_fraction"] == 1.0, f"{run['scenario']}: {run['delivered_fraction']}"
    log.info("quick cross-node benchmark: %s", proc.stdout.strip().splitlines()[-1])
