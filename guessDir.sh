#!/usr/bin/env bash
# Classify every image in SRC and copy it into DST as <label>-<score>.<ext> (with
# DST/manifest.csv), using the model trained into TF_FILES. SRC is never modified.
# Runs in Docker when available, else locally.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

usage="bash guessDir.sh TF_FILES SRC DST [tfguess guess-dir options, e.g. --by-label]"
[[ ${1:-} == -h || ${1:-} == --help ]] && { echo "usage: $usage"; exit 0; }
[[ $# -ge 3 && -n $1 && -n $2 && -n $3 && $1 != -* && $2 != -* && $3 != -* ]] ||
    tfg_usage "$usage" "SRC: folder of images to classify; DST: folder for the labelled copies."
tf_files=$(tfg_abs "$1")
src=$(tfg_abs "$2")
dst=$(tfg_abs "$3")
shift 3
tfg_need_path "$tf_files" "TF_FILES: the folder train.sh wrote the model into"
tfg_need_dir "$src" "SRC: the folder of images to classify"
if [[ -e $dst && ! -d $dst ]]; then tfg_die "$dst: exists and is not a folder (DST)"; fi
if [[ ! -e $dst ]]; then
    mkdir -p -- "$dst" || tfg_die "$dst: cannot create the folder (DST)"
    tfg_say "created $dst"
fi
TFG_RW=("$dst")
tfg_run guess-dir "$tf_files" "$src" "$dst" "$@"
