#!/usr/bin/env bash
# End-to-end CPU benchmark through verl's real trainer: plain RFT (prefix_rft.num_prefixed=0) vs Prefix-RFT,
# same seed / steps / data / tiny model. Prints step time (and the ratio), tokens decoded per step, and
# tokens decoded per prefixed vs on-policy rollout. ~2.5 minutes on 2 cores.
#
#   bash scripts/bench_e2e_cpu.sh [--steps 6] [--seed 0] [--max-response-length 64] [--out DIR]
#   bash scripts/bench_e2e_cpu.sh --quick     # 2 steps (1 timed), 32-token responses: checks it runs
# The last lines are machine-readable: `RESULT <name>=<value>` (benchmarks/e2e.py RESULT_KEYS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m benchmarks.e2e "$@"
