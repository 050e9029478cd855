#!/usr/bin/env bash
# Build the linux/arm64 image and train the demo in it, on any machine with a Docker engine;
# on x86_64 through QEMU user emulation (slow: the base image alone took 53 minutes on a busy
# two-core machine, so not in CI).
#
#   sudo bash scripts/arm64-docker-check.sh
#
# 1. scripts/docker-engine.sh start --arch arm64: the engine, QEMU's binfmt handler, and the
#    base image tfguess-base:bookworm-arm64 (debootstrap --arch=arm64).
# 2. python -m tfguess.docker build --platform linux/arm64 (the Dockerfile picks
#    requirements-docker-arm64.txt).
# 3. In the image: the architecture, the versions, `tfguess train --engine keras` on a copy of
#    tf_files/data, then `tfguess guess` on a test photo; each step timed, the model and summary
#    checked.
#
# Settings: TFGUESS_ARM64_IMAGE (default tfguess:arm64), TFGUESS_BASE_IMAGE (default
# tfguess-base:bookworm-arm64), TFGUESS_KEEP_IMAGE=1 keeps the image afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE=${TFGUESS_ARM64_IMAGE:-tfguess:arm64}
BASE=${TFGUESS_BASE_IMAGE:-tfguess-base:bookworm-arm64}
# The launcher builds (host network, the CA bundle pip uses here); it needs the docker package.
PY=${TFGUESS_HOST_PYTHON:-python3}
"$PY" -c 'import docker' 2>/dev/null || { echo "arm64-check: $PY cannot import docker (set TFGUESS_HOST_PYTHON)" >&2; exit 1; }

say() { printf 'arm64-check: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
stage() { say "$1: $(($SECONDS - $2)) s"; }

TFGUESS_BASE_IMAGE=$BASE bash scripts/docker-engine.sh start --arch arm64 >/dev/null

t=$SECONDS
PYTHONPATH=$PWD/src "$PY" -m tfguess.docker build --platform linux/arm64 --image "$IMAGE" \
    --base-image "$BASE" || die "building $IMAGE for linux/arm64 failed"
stage "build" $t
arch=$(docker image inspect "$IMAGE" --format '{{.Os}}/{{.Architecture}}')
[[ $arch == linux/arm64 ]] || die "$IMAGE is $arch, not linux/arm64"

work=$(mktemp -d "${TMPDIR:-/tmp}/tfguess-arm64.XXXXXX")
trap 'rm -rf "$work"; [[ ${TFGUESS_KEEP_IMAGE:-} == 1 ]] || docker image rm "$IMAGE" >/dev/null 2>&1 || true' EXIT
mkdir "$work/tf_files"
cp -r tf_files/data "$work/tf_files/data"
cp test_data/face_090.jpg "$work/photo.jpg"
chmod -R a+rwX "$work"
run() {
    docker run --rm --platform linux/arm64 --network none -u "$(id -u):$(id -g)" -e HOME=/tmp \
        -v "$work:/work" "$@"
}

run --entrypoint /bin/sh "$IMAGE" -c 'uname -m; python3 -c "
import platform, tensorflow as tf, keras, numpy
print(platform.machine(), \"tensorflow\", tf.__version__, \"keras\", keras.__version__, \"numpy\", numpy.__version__)
try:
    import ai_edge_litert
    print(\"ai-edge-litert\", ai_edge_litert.__version__ if hasattr(ai_edge_litert, \"__version__\") else \"present\")
except ImportError as e:
    print(\"ai-edge-litert: absent:\", e)
"' || die "TensorFlow does not import in $IMAGE"

# --engine keras: converting the backbone to TFLite under emulation had not finished after 47
# minutes, while Keras runs the demo's features in about 14 (4.1-4.4 s a photo).
t=$SECONDS
run "$IMAGE" train /work/tf_files --engine keras || die "tfguess train failed in $IMAGE"
stage "train (demo, $(find tf_files/data -type f | wc -l) photos)" $t
[[ -s $work/tf_files/model.keras && -s $work/tf_files/run_summary.json ]] ||
    die "train wrote no model.keras / run_summary.json"
python3 - "$work/tf_files/run_summary.json" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
print("arm64-check: summary:", json.dumps({k: summary[k] for k in ("metrics", "timings") if k in summary})[:600])
EOF

t=$SECONDS
out=$(run "$IMAGE" guess /work/tf_files /work/photo.jpg --engine keras) ||
    die "tfguess guess failed in $IMAGE"
stage "guess" $t
printf '%s\n' "$out"
[[ $(printf '%s\n' "$out" | head -n1) == face* ]] || die "the face photo was not guessed 'face'"
say "ok: $IMAGE built and trained the demo under linux/arm64"
