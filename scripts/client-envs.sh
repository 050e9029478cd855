#!/usr/bin/env bash
# Third-party clients of the exported models, each in its own virtual environment (their
# dependencies conflict with TensorFlow 2 and with each other). tests/export/test_export_clients.py and
# bench/export_clients.py run tests/export/clients/run_*.py with them.
#
#   bash scripts/client-envs.sh [NAME...]     (default: all; NAME: tf1 mediapipe tflite-support onnxruntime)
#
# Environments go to $TFGUESS_CLIENT_ENVS (default <repo>/.client-envs, git-ignored); one that
# already imports its client is kept. The Pythons come from pyenv (~/.pyenv/versions): 3.7 for
# TensorFlow 1.15 (its last release has wheels up to 3.7 only), 3.11 for the others. pip's
# download cache ($PIP_CACHE_DIR, default ~/.cache/pip) makes a second creation fast.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=${TFGUESS_CLIENT_ENVS:-$PWD/.client-envs}
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
mkdir -p "$root"

say() { printf 'client-envs: %s\n' "$*" >&2; }

python_for() {   # python_for 3.7 -> the newest pyenv 3.7.x interpreter
    local v
    v=$(ls -d "$pyenv_root"/versions/"$1".* 2>/dev/null | sort -V | tail -1)
    if [[ -z $v || ! -x $v/bin/python ]]; then
        say "error: no Python $1 under $pyenv_root/versions: install it with pyenv install $1"
        exit 1
    fi
    printf '%s/bin/python\n' "$v"
}

# make NAME PYTHON_VERSION IMPORT_CHECK PACKAGE...
make_env() {
    local name=$1 version=$2 check=$3
    shift 3
    local env=$root/$name start=$SECONDS
    if [[ -x $env/bin/python ]] && "$env/bin/python" -c "$check" >/dev/null 2>&1; then
        say "$name: ready ($env)"
        return
    fi
    rm -rf "$env"
    say "$name: creating $env with Python $version: $*"
    "$(python_for "$version")" -m venv "$env"
    "$env/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip<24.1" >&2
    "$env/bin/python" -m pip install -q --disable-pip-version-check --prefer-binary "$@" >&2
    "$env/bin/python" -c "$check"
    say "$name: done in $((SECONDS - start)) s"
}

names=("$@")
((${#names[@]})) || names=(tf1 mediapipe tflite-support onnxruntime)
for name in "${names[@]}"; do
    case $name in
        tf1) make_env tf1 3.7 "import tensorflow as tf; assert tf.__version__ == '1.15.5'" \
                 tensorflow==1.15.5 protobuf==3.20.3 "numpy<1.19" ;;
        mediapipe) make_env mediapipe 3.11 "import mediapipe.tasks.python.vision" \
                 mediapipe "numpy<2.3" ;;
        tflite-support) make_env tflite-support 3.11 "import tflite_support.task.vision" \
                 tflite-support==0.4.4 ;;
        onnxruntime) make_env onnxruntime 3.11 "import onnxruntime, PIL, cv2" onnxruntime pillow opencv-python-headless ;;
        *) say "error: unknown client environment $name (tf1, mediapipe, tflite-support, onnxruntime)"
           exit 2 ;;
    esac
done
