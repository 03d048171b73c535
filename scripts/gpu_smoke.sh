#!/usr/bin/env bash
# GPU smoke test for one GPU, ~5-10 minutes with a 0.5B model: 3 Prefix-RFT steps with vLLM + FSDP through
# recipe/prefix_rft/main_prefix_rft.py on synthetic arithmetic data with demonstrations, PASS/FAIL per
# integration point (benchmarks/smoke.py), then the core and loss benchmarks on cuda.
#
#   huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir ~/models/Qwen2.5-0.5B-Instruct
#   bash scripts/gpu_smoke.sh ~/models/Qwen2.5-0.5B-Instruct [--out DIR] [--steps 3] [--gpu-mem 0.4]
#
# Needs the GPU stack (pip install -e ".[vllm]"). Exit status: that of the PASS/FAIL checks.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash scripts/gpu_smoke.sh MODEL_DIR [--out DIR] [--steps N] [--gpu-mem F]" >&2
    exit 2
fi

"$PYTHON" -m benchmarks.smoke run "$@"
rc=$?
if [[ $rc -eq 2 || " $* " == *" --cfg-job "* ]]; then exit "$rc"; fi  # 2: bad arguments

echo "== bench_core.py (cuda)"
"$PYTHON" scripts/bench_core.py --device cuda --repeats 10 || rc=1
echo "== bench_loss.py (cuda)"
"$PYTHON" scripts/bench_loss.py --device cuda || rc=1
exit "$rc"
