#!/usr/bin/env bash
# Baseline: plain RFT / Dr.GRPO (paper's "RFT" row): no demo prefixes, everything else as Prefix-RFT.
# Usage: bash scripts/run_rft_qwen7b.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

METHOD_ARGS=(
    prefix_rft.num_prefixed=0
)
METHOD_NAME=rft
prefix_rft_train "$@"
