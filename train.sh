#!/usr/bin/env bash
# Train a classifier on the photos in TF_FILES/data/<label>/; the model, labels, report and
# bottleneck cache are written into TF_FILES. Runs in Docker when available, else locally.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

usage="bash train.sh TF_FILES [tfguess train options, e.g. --backbone NAME]"
[[ ${1:-} == -h || ${1:-} == --help ]] && { echo "usage: $usage"; exit 0; }
[[ $# -ge 1 && -n $1 && $1 != -* ]] ||
    tfg_usage "$usage" "TF_FILES: folder holding data/<label>/ photo folders; outputs go there too."
tf_files=$(tfg_abs "$1")
shift
tfg_need_dir "$tf_files" "TF_FILES: the folder holding data/<label>/"
TFG_RW=("$tf_files")
tfg_run train "$tf_files" "$@"
