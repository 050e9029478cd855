#!/usr/bin/env bash
# Serve the model trained into TF_FILES: a web page and a REST API on http://127.0.0.1:PORT/
# (default 8080), with the evaluation report and the review page. Runs in Docker when
# available (the port is published on the host's 127.0.0.1 only), else locally. Ctrl-C stops.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

usage="bash serve.sh TF_FILES [PORT] [tfguess serve options, e.g. --queue-size 64]"
[[ ${1:-} == -h || ${1:-} == --help ]] && { echo "usage: $usage"; exit 0; }
[[ $# -ge 1 && -n $1 && $1 != -* ]] ||
    tfg_usage "$usage" "TF_FILES: the folder train.sh wrote the model into (or the model file)."
tf_files=$(tfg_abs "$1")
shift
tfg_need_path "$tf_files" "TF_FILES: the folder train.sh wrote the model into"
port=8080
if [[ $# -ge 1 && $1 != -* ]]; then
    [[ $1 =~ ^[0-9]+$ && $1 -ge 1 && $1 -le 65535 ]] || tfg_usage "$usage" "PORT: a number from 1 to 65535, not '$1'."
    port=$1
    shift
fi
# The review page moves images inside TF_FILES and re-trains into it.
[[ -d $tf_files ]] && TFG_RW=("$tf_files")
TFG_PUBLISH=$port
# In Docker the server listens on the container's interfaces, but the port is published on the
# host's 127.0.0.1 only: as private as a local run, so no API key is required there. Given
# --host or --api-key, the server's own rule applies (a key beyond loopback). TFGUESS_API_KEY
# is handed on as --api-key (the container does not inherit the environment).
auth=(--no-auth)
[[ -n ${TFGUESS_API_KEY:-} ]] && auth=(--api-key "$TFGUESS_API_KEY")
for arg in "$@"; do
    [[ $arg == --host* || $arg == --api-key* || $arg == --no-auth ]] && auth=()
done
tfg_run serve "$tf_files" --port "$port" "${auth[@]}" "$@"
