#!/usr/bin/env bash
# Export the model trained into TF_FILES (TFLite, Core ML, SavedModel, frozen graph) into
# TF_FILES/export/. Runs in Docker when available, else locally.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

usage="bash export.sh TF_FILES [--format tflite|coreml|savedmodel|frozen-graph] [options]"
[[ ${1:-} == -h || ${1:-} == --help ]] && { echo "usage: $usage"; exit 0; }
[[ $# -ge 1 && -n $1 && $1 != -* ]] ||
    tfg_usage "$usage" "TF_FILES: the folder train.sh wrote the model into; exports go to TF_FILES/export/."
tf_files=$(tfg_abs "$1")
shift
tfg_need_dir "$tf_files" "TF_FILES: the folder train.sh wrote the model into"
TFG_RW=("$tf_files")
# --out DIR (outside TF_FILES): create it here so that Docker can mount it for writing.
args=("$@")
for i in "${!args[@]}"; do
    out=""
    case ${args[$i]} in
        --out=*) out=${args[$i]#--out=}; out=$(tfg_abs "$out"); args[i]="--out=$out" ;;
        --out) if ((i + 1 < ${#args[@]})); then
                   out=$(tfg_abs "${args[i + 1]}"); args[i + 1]=$out
               fi ;;
    esac
    if [[ -n $out ]]; then
        mkdir -p -- "$out" || tfg_die "$out: cannot create the folder (--out)"
        TFG_RW+=("$out")
    fi
done
tfg_run export "$tf_files" ${args[@]+"${args[@]}"}
