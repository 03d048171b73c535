#!/usr/bin/env bash
# Baseline: LUFFY as LUFFY runs it, as a Prefix-RFT configuration: one of the 8 rollouts is the WHOLE
# demonstration (ratio fixed at 1.0), importance weight with behaviour prob 1 shaped as pi / (pi + 0.1), no
# PPO clip on demo tokens, every demo token trained (no entropy clipping), Dr.GRPO's constant normaliser.
# Usage: bash scripts/run_luffy_qwen7b.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

# the recipe's `luffy` preset (recipe/prefix_rft/config/preset/luffy.yaml): whole demo, policy shaping,
# no clip on demo tokens, every demo token trained
METHOD_ARGS=(+preset=luffy)
METHOD_NAME=luffy
prefix_rft_train "$@"
