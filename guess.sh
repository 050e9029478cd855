#!/usr/bin/env bash
# Print the most likely labels of one or more images, with the model trained into TF_FILES.
# Runs in Docker when available, else locally.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

usage="bash guess.sh TF_FILES IMAGE [IMAGE ...] [tfguess guess options, e.g. --top-k 3]"
[[ ${1:-} == -h || ${1:-} == --help ]] && { echo "usage: $usage"; exit 0; }
[[ $# -ge 2 && -n $1 && -n $2 && $1 != -* && $2 != -* ]] ||
    tfg_usage "$usage" "TF_FILES: the folder train.sh wrote the model into (or the model file)."
tf_files=$(tfg_abs "$1")
tfg_need_path "$tf_files" "TF_FILES: the folder train.sh wrote the model into"
shift
tfg_need_path "$(tfg_abs_quiet "$1")" "IMAGE: the photo to classify"
args=()
for arg in "$@"; do
    if [[ $arg != -* && -e $arg ]]; then arg=$(tfg_abs "$arg"); fi
    args+=("$arg")
done
tfg_run guess "$tf_files" "${args[@]}"
