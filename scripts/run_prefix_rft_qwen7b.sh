#!/usr/bin/env bash
# Prefix-RFT on Qwen2.5-Math-7B (paper sec. 3 / A.2), FSDP + vLLM, one 8-GPU node by default.
# The recipe yaml already holds the paper's settings: 1 of 8 rollouts starts from a demo prefix, cosine
# ratio schedule 0.95 -> 0.05 over 500 steps, top-20% entropy clipping per mini-batch, Dr.GRPO.
# Usage: bash scripts/run_prefix_rft_qwen7b.sh [hydra overrides...]   (e.g. trainer.nnodes=2)
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

METHOD_NAME=prefix_rft
prefix_rft_train "$@"
