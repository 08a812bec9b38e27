"""Print the README's benchmark summary (medians per receiver count, ours / baseline) from a result file.

Usage: python tests/bench/summarize.py bench-results/latest.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from run_fanout import _median  # a sibling script: run as python tests/bench/summarize.py

ROWS = [
    ("server CPU µs per delivered update", "server_us_per_delivery", "{:.1f}"),
    ("fan-out latency p50 (ms)", "latency_p50_ms", "{:.1f}"),
    ("fan-out latency p99 (ms)", "latency_p99_ms", "{:.1f}"),
    ("delivered fraction", "delivered_fraction", "{:.3f}"),
    ("server RSS per idle connection (KB)", "rss_per_idle_conn_kb", "{:.1f}"),
    ("server RSS with receivers idle (MB)", "rss_idle_mb", "{:.0f}"),
]


def _median_of(runs: list[dict], key: str) -> float | None:
    return _median([run.get(key) for run in runs])


def summarize(result: dict) -> str:
    runs: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for run in result["fanout"]:
        runs[(run["receivers"], run["server"])].append(run)
    counts = sorted({n for n, _ in runs if n > 0})
    lines = [
        "| metric | " + " | ".join(f"{n} receivers" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for label, key, fmt in ROWS:
        cells = []
        for n in counts:
            ours, base = _median_of(runs[(n, "ours")], key), _median_of(runs[(n, "baseline")], key)
            if ours is None or base is None:
                cells.append("-")
                continue
            ratio = f" ({ours / base:.2f})" if base else ""
            cells.append(f"{fmt.format(ours)} / {fmt.format(base)}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cold = {entry["server"]: entry for entry in result.get("cold_sync", [])}
    if "ours" in cold and "baseline" in cold:
        ours, base = cold["ours"], cold["baseline"]
        lines.append("")
        lines.append(
            f"Cold sync of a {ours['elements']:,}-element canvas ({ours['state_bytes'] / 1e6:.1f} MB): "
            f"{ours['first_sync_ms']:.0f} ms for the first client after a restart "
            "(ours loads it from SQLite) "
            f"vs {base['first_sync_ms']:.0f} ms (baseline, in memory); {ours['warm_sync_ms']:.0f} vs "
            f"{base['warm_sync_ms']:.0f} ms once loaded."
        )
    lines.append("")
    lines.append(f"Run `{result['started_at']}`; cells are ours / baseline (ratio).")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        sys.stdout.write(summarize(json.load(handle)) + "\n")
