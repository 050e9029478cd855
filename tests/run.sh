#!/usr/bin/env bash
# The test suite: makes the virtual environment (.venv, or $TFGUESS_VENV) with the test extras
# on first use, then runs pytest with any arguments given (e.g. -m "not docker", -k guess).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${TFGUESS_VENV:-.venv}
if [[ ! -x $venv/bin/python ]]; then
    echo "tests: creating $venv" >&2
    python3 -m venv "$venv"
fi
echo "tests: installing tfguess with its test extras into $venv" >&2
# pip 25+: the platform check (tests/test_platforms.py) then reads wheel metadata only.
"$venv/bin/python" -m pip install -q --upgrade "pip>=25"
"$venv/bin/python" -m pip install -q -e ".[dev,export,serve,browser-tests,ray,onnx,fast-jpeg]"
exec "$venv/bin/python" -m pytest -ra "$@"
