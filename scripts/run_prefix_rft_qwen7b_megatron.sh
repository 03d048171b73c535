#!/usr/bin/env bash
# Prefix-RFT on Qwen2.5-Math-7B with verl's Megatron engine (model_engine=megatron) instead of FSDP.
# Needs verl's megatron extra (pip install -e ".[megatron]"). TRAIN_TP / TRAIN_PP set the actor's
# tensor / pipeline parallel sizes.
# Usage: bash scripts/run_prefix_rft_qwen7b_megatron.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

TRAIN_TP=${TRAIN_TP:-4}
TRAIN_PP=${TRAIN_PP:-1}
ENGINE_ARGS=(
    model_engine=megatron
    actor_rollout_ref.actor.megatron.tensor_model_parallel_size="$TRAIN_TP"
    actor_rollout_ref.actor.megatron.pipeline_model_parallel_size="$TRAIN_PP"
)
METHOD_NAME=prefix_rft_megatron
prefix_rft_train "$@"
