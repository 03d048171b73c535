#!/usr/bin/env bash
# SFT half of the baselines (sourced after _prefix_rft_common.sh, never run directly): verl's own engine-based
# SFT trainer (verl.trainer.sft_trainer, FSDP, loss = demo-token NLL summed over the global batch and divided
# by its token count) on $SFT_TRAIN_FILES, and verl's model merger (checkpoint -> HF dir).
#
# Knobs (environment variables, with defaults; not from the paper, which does not state its SFT settings):
#   SFT_TRAIN_FILES   the SFT parquet ($DATA_DIR/sft_train.parquet, written by `python -m prefix_rft.data prepare`)
#   SFT_EPOCHS 3   SFT_LR 5e-5   SFT_BATCH 64 (global)   SFT_WARMUP 0.1 (cosine schedule)
#   SFT_MAX_LENGTH 16384 (prompt + demonstration; the data keeps demos <= 8192 tokens)
#   SFT_MAX_TOKEN_LEN_PER_GPU 32768 (dynamic micro-batches)   SFT_CKPT_DIR   SFT_EXP_NAME
#   TORCHRUN_ARGS   default --standalone on one node; for NNODES > 1 give the rendezvous yourself, e.g.
#                   "--node-rank=\$RANK --master-addr=\$MASTER_ADDR --master-port=29500"

SFT_TRAIN_FILES=${SFT_TRAIN_FILES:-$DATA_DIR/sft_train.parquet}
SFT_EPOCHS=${SFT_EPOCHS:-3}
SFT_LR=${SFT_LR:-5e-5}
SFT_BATCH=${SFT_BATCH:-64}
SFT_WARMUP=${SFT_WARMUP:-0.1}
SFT_MAX_LENGTH=${SFT_MAX_LENGTH:-16384}
SFT_MAX_TOKEN_LEN_PER_GPU=${SFT_MAX_TOKEN_LEN_PER_GPU:-32768}
SFT_EXP_NAME=${SFT_EXP_NAME:-sft_qwen2.5_math_7b}
SFT_CKPT_DIR=${SFT_CKPT_DIR:-checkpoints/${PROJECT}/${SFT_EXP_NAME}}


# prefix_rft_sft [hydra overrides of verl's sft_trainer_engine.yaml...]
prefix_rft_sft() {
    local sft_args=(
        model.path="$MODEL_PATH"
        data.train_files="$SFT_TRAIN_FILES"
        data.val_files=null
        data.messages_key=messages
        data.train_batch_size="$SFT_BATCH"
        data.use_dynamic_bsz=True
        data.max_token_len_per_gpu="$SFT_MAX_TOKEN_LEN_PER_GPU"
        data.max_length="$SFT_MAX_LENGTH"
        data.truncation=error
        optim.lr="$SFT_LR"
        optim.lr_warmup_steps_ratio="$SFT_WARMUP"
        optim.lr_scheduler_type=cosine
        engine.strategy=fsdp2
        model.enable_gradient_checkpointing=True
        model.use_remove_padding=True
        trainer.total_epochs="$SFT_EPOCHS"
        trainer.save_freq=-1
        trainer.nnodes="$NNODES"
        trainer.n_gpus_per_node="$GPUS_PER_NODE"
        trainer.project_name="$PROJECT"
        trainer.experiment_name="$SFT_EXP_NAME"
        trainer.default_local_dir="$SFT_CKPT_DIR"
        trainer.logger="$LOGGER"
    )
    if _has_cfg_flag "$@"; then  # compose only: one plain process, no torchrun, no GPU
        "$PYTHON" -m verl.trainer.sft_trainer "${sft_args[@]}" "$@"
        return
    fi
    local rdzv=${TORCHRUN_ARGS:-}
    if [[ -z "$rdzv" ]]; then
        if [[ "$NNODES" != 1 ]]; then
            echo "NNODES=$NNODES: set TORCHRUN_ARGS to this node's torchrun rendezvous" \
                 "(e.g. --node-rank=\$RANK --master-addr=\$MASTER_ADDR --master-port=29500)" >&2
            return 2
        fi
        rdzv=--standalone
    fi
    # shellcheck disable=SC2086
    "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" $rdzv \
        -m verl.trainer.sft_trainer "${sft_args[@]}" "$@"
}

# prefix_rft_merge_latest CKPT_DIR TARGET_DIR: verl's model merger on the newest global_step_N of CKPT_DIR.
prefix_rft_merge_latest() {
    local ckpt_dir=$1 target=$2 step
    step=$(cat "$ckpt_dir/latest_checkpointed_iteration.txt")
    "$PYTHON" -m verl.model_merger merge --backend fsdp \
        --local_dir "$ckpt_dir/global_step_$step" --target_dir "$target"
}
