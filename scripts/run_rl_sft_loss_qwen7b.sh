#!/usr/bin/env bash
# Baseline "RL + SFT loss" (LUFFY's baseline, in the paper's table): on-policy RL (no demo prefixes) plus an
# SFT (NLL) term on the whole demonstration, as the recipe preset `rl_sft_loss`
# (recipe/prefix_rft/config/preset/rl_sft_loss.yaml; its keys are documented in the recipe README).
# Usage: bash scripts/run_rl_sft_loss_qwen7b.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

METHOD_ARGS=(
    +preset=rl_sft_loss
)
METHOD_NAME=rl_sft_loss
prefix_rft_train "$@"
