#!/usr/bin/env bash
# Prefix-RFT on Qwen2.5-Math-7B on 2 nodes x 8 GPUs (FSDP + vLLM, paper settings), through a Ray cluster
# started beforehand, as verl runs multi-node:
#   1. every node: the same checkout of this repo and `pip install -e ".[vllm]"` (Ray workers import
#      prefix_rft there: actor_rollout_ref.model.external_lib and the pickled actor loss), the model and the
#      parquet files at the same paths (the task runner may land on any node);
#   2. head node:   ray start --head --port=6379
#      other nodes: ray start --address=<head-ip>:6379      (then `ray status` on the head shows 16 GPUs)
#   3. head node:   CKPT_DIR=/shared/checkpoints/prefix_rft bash scripts/run_prefix_rft_qwen7b_2nodes.sh
# CKPT_DIR must be a directory every node sees (each rank writes its own shard there; resume reads them all).
# The run joins the running cluster (ray_kwargs.ray_init.address=auto) and fails if there is none, instead of
# starting a one-node Ray that would wait for 16 GPUs forever. NNODES (default 2) sets the cluster size.
# Usage: bash scripts/run_prefix_rft_qwen7b_2nodes.sh [hydra overrides...]
NNODES=${NNODES:-2}
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"

if ! _has_cfg_flag "$@" && [[ "${CKPT_DIR:-}" != /* ]]; then
    echo "run_prefix_rft_qwen7b_2nodes.sh: set CKPT_DIR to an absolute directory on storage every node shares" \
        "(got CKPT_DIR='${CKPT_DIR:-}'), e.g. CKPT_DIR=/shared/checkpoints/prefix_rft" >&2
    exit 2
fi

METHOD_NAME=prefix_rft
prefix_rft_train +ray_kwargs.ray_init.address=auto "$@"
