#!/usr/bin/env bash
# Baselines "SFT then RFT" / "SFT then Prefix-RFT": verl's SFT trainer on the demonstrations, the checkpoint
# converted to HF with verl's model merger, then RL from it with the recipe (RL=rft | prefix_rft).
# Usage: RL=rft bash scripts/run_sft_then_rl_qwen7b.sh [RL overrides...]
#   overrides on the command line go to the RL half; SFT_OVERRIDES="k=v k=v" to the SFT half.
#   --cfg job composes both halves (the RL half with the HF dir the merger will write) and launches nothing.
# SFT settings: scripts/_sft_common.sh; RL settings: the recipe yaml (run_rft_qwen7b.sh / run_prefix_rft_qwen7b.sh).
source "$(dirname "${BASH_SOURCE[0]}")/_prefix_rft_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_sft_common.sh"

RL=${RL:-prefix_rft}
case "$RL" in
    rft) METHOD_ARGS=(+preset=rft) ;;
    prefix_rft) METHOD_ARGS=(+preset=prefix_rft) ;;
    *) echo "RL=$RL: choose RL=rft or RL=prefix_rft" >&2; exit 2 ;;
esac
METHOD_NAME=sft_then_${RL}
SFT_HF_DIR=${SFT_HF_DIR:-$SFT_CKPT_DIR/hf}
read -r -a sft_overrides <<< "${SFT_OVERRIDES:-}"

if _has_cfg_flag "$@"; then
    prefix_rft_sft "${sft_overrides[@]}" --cfg job
    echo "---"  # two YAML documents: the SFT config, then the RL config
else
    prefix_rft_sft "${sft_overrides[@]}"
    prefix_rft_merge_latest "$SFT_CKPT_DIR" "$SFT_HF_DIR"
fi
MODEL_PATH=$SFT_HF_DIR
prefix_rft_train "$@"
