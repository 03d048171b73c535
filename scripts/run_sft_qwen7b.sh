#!/usr/bin/env bash
# Baseline "SFT" (the paper's table): verl's own SFT trainer on the demonstrations of the RL data, then the
# checkpoint converted to a Hugging Face dir ($SFT_CKPT_DIR/hf) with verl's model merger.
# Data: python -m prefix_rft.data prepare openr1 --output-dir $DATA_DIR   (writes sft_train.parquet too)
# Usage: bash scripts/run_sft_qwen7b.sh [overrides of verl's sft_trainer_engine.yaml...]   (--cfg job: compose only)
# Settings and knobs: scripts/_sft_common.sh; one 8-GPU node by default.
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_sft_common.sh"

prefix_rft_sft "$@"
if ! _has_cfg_flag "$@"; then
    prefix_rft_merge_latest "$SFT_CKPT_DIR" "$SFT_CKPT_DIR/hf"
fi
