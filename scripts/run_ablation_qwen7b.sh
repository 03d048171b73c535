#!/usr/bin/env bash
# Any named preset (a paper baseline or ablation) over the shared launcher body.
# Usage: bash scripts/run_ablation_qwen7b.sh NAME [hydra overrides...]    (the command line wins)
#        bash scripts/run_ablation_qwen7b.sh --list                       (every preset, one line each)
# NAME is recipe/prefix_rft/config/preset/NAME.yaml, selected with +preset=NAME.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -lt 1 || $1 == --list || $1 == -l ]]; then
    "${PYTHON:-python3}" "$ROOT/recipe/prefix_rft/presets.py" --list
    [[ $# -ge 1 ]] && exit 0
    echo "usage: bash scripts/run_ablation_qwen7b.sh NAME [hydra overrides...]" >&2
    exit 2
fi
PRESET=$1
shift
"${PYTHON:-python3}" "$ROOT/recipe/prefix_rft/presets.py" "$PRESET" || exit 2
source "$ROOT/scripts/_prefix_rft_common.sh"

METHOD_ARGS=(
    +preset="$PRESET"
)
METHOD_NAME=$PRESET
prefix_rft_train "$@"
