#!/usr/bin/env bash
# Prefix-RFT on Qwen2.5-Math-7B with verl's Megatron engine (model_engine=megatron) instead of FSDP.
# Needs verl's megatron extra (pip install -e ".[megatron]"). TRAIN_TP / TRAIN_PP set the actor's
# tensor / pipeline parallel sizes.
# Usage: bash scripts/run_prefix_rft_qwen7b_megatron.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

TRAIN_TP=${TRAIN_TP:-4}
TRAIN_PP=${TRAIN_PP:-1}
# Megatron reads no model.enable_gradient_checkpointing: activation recompute is Megatron's own
# (override_transformer_config.recompute_*; full recompute of every layer, as verl's Megatron examples).
# It has no entropy checkpointing key; the common body's chunked entropy applies here too.
ENGINE_ARGS=(
    model_engine=megatron
    actor_rollout_ref.actor.megatron.tensor_model_parallel_size="$TRAIN_TP"
    actor_rollout_ref.actor.megatron.pipeline_model_parallel_size="$TRAIN_PP"
    actor_rollout_ref.actor.megatron.override_transformer_config.recompute_granularity=full
    actor_rollout_ref.actor.megatron.override_transformer_config.recompute_method=uniform
    actor_rollout_ref.actor.megatron.override_transformer_config.recompute_num_layers=1
)
METHOD_NAME=prefix_rft_megatron
prefix_rft_train "$@"
