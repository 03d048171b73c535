#!/usr/bin/env bash
# Baseline: LUFFY-style mixed-policy RL as a Prefix-RFT configuration: one of the 8 rollouts is the WHOLE
# demonstration (ratio fixed at 1.0), importance weight with behaviour prob 1 shaped as pi / (pi + 0.1),
# every demo token trained (no entropy clipping).
# Usage: bash scripts/run_luffy_qwen7b.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

METHOD_ARGS=(
    prefix_rft.ratio.schedule=const
    prefix_rft.ratio.low_start=1.0
    prefix_rft.ratio.low_end=1.0
    prefix_rft.ratio.high=1.0
    prefix_rft.loss.is_mode=luffy
    prefix_rft.entropy_clip.enable=false
)
METHOD_NAME=luffy
prefix_rft_train "$@"
