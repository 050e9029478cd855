# shellcheck shell=bash
# Shared by train.sh, guess.sh, guessDir.sh and export.sh: argument checks, then the work runs
# in Docker when a daemon answers, else in a local virtual environment.
#
#   TFGUESS_LOCAL=1        always run locally
#   TFGUESS_DOCKER=1       always run in Docker (an error when no daemon answers)
#   TFGUESS_VENV=DIR       the local virtual environment (default <repo>/.venv, made on first use)
#   TFGUESS_IMAGE=NAME     the Docker image (default tfguess:latest, built on first use)
#   TFGUESS_HOST_PYTHON=P  the Python that runs the Docker launcher (needs the docker package)

TFGUESS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TFG_RW=()   # paths the container may write (the wrappers' outputs)
TFG_PUBLISH=""  # a port the container's server listens on (published on 127.0.0.1 only)

tfg_say() { printf 'tfguess: %s\n' "$*" >&2; }
tfg_die() { printf 'tfguess: error: %s\n' "$*" >&2; exit 1; }

# tfg_usage USAGE DETAILS: print the usage and exit 2 (a wrong call).
tfg_usage() {
    printf 'usage: %s\n' "$1" >&2
    [[ -z ${2:-} ]] || printf '%s\n' "$2" >&2
    exit 2
}

# tfg_abs_quiet PATH: print PATH made absolute.
tfg_abs_quiet() {
    local path=$1
    [[ -n $path ]] || tfg_die "an empty path was given"
    case $path in
        /*) printf '%s\n' "$path" ;;
        *) if [[ -d $path ]]; then
               (cd "$path" && pwd)
           elif [[ -e $path ]]; then
               printf '%s/%s\n' "$(cd "$(dirname "$path")" && pwd)" "$(basename "$path")"
           else
               printf '%s/%s\n' "$PWD" "${path#./}"
           fi ;;
    esac
}

# tfg_abs PATH: print PATH made absolute; say so on stderr when it was relative.
tfg_abs() {
    local abs
    abs=$(tfg_abs_quiet "$1") || exit 1
    [[ $1 == /* ]] || tfg_say "relative path '$1' taken as '$abs'"
    printf '%s\n' "$abs"
}

tfg_need_dir() {  # PATH WHAT
    [[ -d $1 ]] || tfg_die "$1: no such folder ($2)"
}

tfg_need_path() {  # PATH WHAT
    [[ -e $1 ]] || tfg_die "$1: no such file or folder ($2)"
}

tfg_docker_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    if command -v timeout >/dev/null 2>&1; then
        timeout 20 docker info >/dev/null 2>&1
    else
        docker info >/dev/null 2>&1
    fi
}

# The Python that runs the launcher: one that has the docker package, else a small venv.
tfg_host_python() {
    if [[ -n ${TFGUESS_HOST_PYTHON:-} ]]; then printf '%s\n' "$TFGUESS_HOST_PYTHON"; return; fi
    local py venv
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; del sys.path[0]; import docker.errors' 2>/dev/null; then
            command -v "$py"
            return
        fi
    done
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/tfguess/host-venv"
    if ! "$venv/bin/python" -c 'import docker.errors' 2>/dev/null; then
        tfg_say "installing the docker package for Python into $venv (once)"
        command -v python3 >/dev/null 2>&1 || tfg_die "python3 is needed to drive Docker"
        { python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q 'docker>=7'; } >&2 ||
            tfg_die "could not install the docker package into $venv"
    fi
    printf '%s\n' "$venv/bin/python"
}

tfg_run_docker() {
    local py rw=() path
    py=$(tfg_host_python)
    for path in ${TFG_RW[@]+"${TFG_RW[@]}"}; do rw+=(--rw "$path"); done
    [[ -z $TFG_PUBLISH ]] || rw+=(--publish "$TFG_PUBLISH")
    tfg_say "running in Docker (image ${TFGUESS_IMAGE:-tfguess:latest})"
    # sys.path[0] (the current folder) is replaced by the repository's src folder.
    exec "$py" -c 'import sys; sys.path[0] = sys.argv.pop(1)
from tfguess.docker import main
sys.exit(main(sys.argv[1:]))' "$TFGUESS_REPO/src" run ${rw[@]+"${rw[@]}"} -- "$@"
}

tfg_run_local() {
    local venv=${TFGUESS_VENV:-$TFGUESS_REPO/.venv}
    if [[ ! -x $venv/bin/tfguess ]]; then
        if [[ ! -x $venv/bin/python ]]; then
            tfg_say "creating the virtual environment $venv (once)"
            command -v python3 >/dev/null 2>&1 || tfg_die "python3 (3.10 or newer) is needed"
            python3 -m venv "$venv" >&2 || tfg_die "could not create $venv"
        fi
        tfg_say "installing tfguess and its dependencies into $venv (once, a few minutes)"
        "$venv/bin/python" -m pip install -q -e "${TFGUESS_REPO}[export,serve]" >&2 ||
            tfg_die "could not install tfguess into $venv"
    fi
    tfg_say "running locally ($venv)"
    exec "$venv/bin/tfguess" "$@"
}

# tfg_run SUBCOMMAND ARGS...: run `tfguess SUBCOMMAND ARGS...` in Docker or locally.
tfg_run() {
    if [[ ${TFGUESS_LOCAL:-} == 1 ]]; then
        tfg_run_local "$@"
    elif [[ ${TFGUESS_DOCKER:-} == 1 ]]; then
        tfg_docker_answers ||
            tfg_die "TFGUESS_DOCKER=1 but no Docker daemon answers (docker info fails)"
        tfg_run_docker "$@"
    elif tfg_docker_answers; then
        tfg_run_docker "$@"
    else
        tfg_say "no Docker daemon answers; running locally"
        tfg_run_local "$@"
    fi
}
