#!/usr/bin/env sh
# Fan-out benchmark, ours vs plain pycrdt-websocket (tests/bench/run_fanout.py; results in bench-results/).
#   scripts/bench.sh                 full run (~7 min on 2 cores)
#   scripts/bench.sh --quick         under 2 minutes
#   scripts/bench.sh --profile       full run plus py-spy of our server at 1000 receivers
set -eu
cd "$(dirname "$0")/.."
exec python tests/bench/run_fanout.py "$@"
