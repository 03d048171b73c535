#!/usr/bin/env bash
# Shared body of the scripts/run_*.sh launchers (sourced, never run directly).
#
# Each launcher sets METHOD_ARGS (the method's prefix_rft.* overrides: Prefix-RFT, RFT, LUFFY-style) and
# optionally ENGINE_ARGS (FSDP by default, Megatron), then calls `prefix_rft_train "$@"`. The command line
# comes last, so any hydra override given to a launcher wins, e.g.
#   bash scripts/run_prefix_rft_qwen7b.sh trainer.nnodes=2 data.train_batch_size=256
# `--cfg job` (anywhere on the line) validates the composed config (prefix_rft block and the verl keys it
# depends on, as a run would), prints it and launches nothing (no GPU needed).
#
# Knobs (environment variables, with defaults):
#   MODEL_PATH     HF id or local dir of the policy (LUFFY's 16k-context Qwen2.5-Math-7B)
#   DATA_DIR       folder with train.parquet (python -m prefix_rft.data prepare openr1 --output-dir $DATA_DIR)
#   EVAL_DIR       folder of the benchmark parquets (python -m prefix_rft.data prepare eval --output-dir $EVAL_DIR)
#   TRAIN_FILES, VAL_FILES   parquet paths (default: $DATA_DIR/train.parquet; the six math benchmarks in
#                  $EVAL_DIR, validated at val temperature 0.6 during training)
#   NNODES, GPUS_PER_NODE    cluster shape (1 x 8 GPUs)
#   ROLLOUT_NAME   vllm | sglang;  ROLLOUT_TP   rollout tensor parallel size;  GPU_MEM_UTIL   rollout memory
#   MAX_TOKEN_LEN_PER_GPU    token budget of a dynamic micro-batch (actor and log-prob passes)
#   TOTAL_STEPS    training steps (500 = where the cosine ratio schedule reaches its floor)
#   PROJECT, EXP_NAME, LOGGER   tracking (LOGGER default '["console","file"]': the file logger's jsonl feeds
#                  `python -m prefix_rft.plot`; use '["console","wandb"]' for wandb);  CKPT_DIR
#   PYTHON         interpreter (default: the repository's .venv/bin/python when it exists, as `make` builds
#                  it; else python3)
#   MAX_CKPT_TO_KEEP  actor checkpoints kept on disk (2: ~90 GB each for a 7B FSDP actor with its optimizer)
#
# Memory defaults (recipe/prefix_rft/README.md, "Memory and disk defaults of the launchers"): chunked entropy
# on every engine, entropy checkpointing on FSDP (ENGINE_ARGS below; a launcher for another engine replaces
# ENGINE_ARGS with its own, see run_prefix_rft_qwen7b_megatron.sh).

set -xeuo pipefail

PREFIX_RFT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

MODEL_PATH=${MODEL_PATH:-Elliott/Qwen2.5-Math-7B-16k-think}
DATA_DIR=${DATA_DIR:-$HOME/data/prefix_rft}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/train.parquet}
EVAL_DIR=${EVAL_DIR:-$HOME/data/prefix_rft_eval}
VAL_FILES=${VAL_FILES:-"[$EVAL_DIR/aime24.parquet,$EVAL_DIR/aime25.parquet,$EVAL_DIR/amc23.parquet,$EVAL_DIR/math500.parquet,$EVAL_DIR/minerva.parquet,$EVAL_DIR/olympiadbench.parquet]"}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ROLLOUT_NAME=${ROLLOUT_NAME:-vllm}
ROLLOUT_TP=${ROLLOUT_TP:-2}
GPU_MEM_UTIL=${GPU_MEM_UTIL:-0.6}
MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-18432}
TOTAL_STEPS=${TOTAL_STEPS:-500}
PROJECT=${PROJECT:-prefix_rft}
LOGGER=${LOGGER:-'["console","file"]'}
MAX_CKPT_TO_KEEP=${MAX_CKPT_TO_KEEP:-2}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$PREFIX_RFT_ROOT/.venv/bin/python" ]]; then PYTHON=$PREFIX_RFT_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

METHOD_ARGS=()
# FSDP (the recipe's default engine): recompute the current-policy entropy in the backward pass instead of
# keeping its fp32 [tokens x vocab] intermediates (verl's FSDP engine reads actor.entropy_checkpointing).
ENGINE_ARGS=(
    actor_rollout_ref.actor.entropy_checkpointing=true
)

# _has_cfg_flag ARGS...: true when ARGS ask hydra to print the config (--cfg X, --cfg=X, -c X)
_has_cfg_flag() {
    local a
    for a in "$@"; do [[ "$a" == "--cfg" || "$a" == --cfg=* || "$a" == "-c" ]] && return 0; done
    return 1
}

# prefix_rft_train [hydra overrides...]: launch recipe/prefix_rft/main_prefix_rft.py.
prefix_rft_train() {
    local exp_name=${EXP_NAME:-${METHOD_NAME:-prefix_rft}_qwen2.5_math_7b}
    local ckpt_dir=${CKPT_DIR:-checkpoints/${PROJECT}/${exp_name}}
    local common_args=(
        data.train_files="$TRAIN_FILES"
        data.val_files="$VAL_FILES"
        actor_rollout_ref.model.path="$MODEL_PATH"
        actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$MAX_TOKEN_LEN_PER_GPU"
        actor_rollout_ref.rollout.name="$ROLLOUT_NAME"
        actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
        actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEM_UTIL"
        trainer.nnodes="$NNODES"
        trainer.n_gpus_per_node="$GPUS_PER_NODE"
        trainer.total_training_steps="$TOTAL_STEPS"
        trainer.project_name="$PROJECT"
        trainer.experiment_name="$exp_name"
        trainer.default_local_dir="$ckpt_dir"
        trainer.logger="$LOGGER"
        trainer.max_actor_ckpt_to_keep="$MAX_CKPT_TO_KEEP"
        # entropy in chunks of 2048 tokens (FSDP and Megatron engines alike): no full fp32 [tokens x vocab]
        # softmax at once for entropy_coeff=0.001 and the old-policy entropy of the keep-mask
        actor_rollout_ref.actor.entropy_from_logits_with_chunking=true
    )
    "$PYTHON" "$PREFIX_RFT_ROOT/recipe/prefix_rft/main_prefix_rft.py" \
        "${common_args[@]}" "${ENGINE_ARGS[@]}" "${METHOD_ARGS[@]}" "$@"
}
