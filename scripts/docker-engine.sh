#!/usr/bin/env bash
# Start (or stop) a local Docker engine for tfguess on a Debian/Ubuntu machine without one,
# and make the base image the Dockerfile builds on when no registry can be reached.
#
#   sudo bash scripts/docker-engine.sh start   # idempotent: install, start, wait, base image
#   sudo bash scripts/docker-engine.sh start --arch arm64   # also a linux/arm64 base image
#   sudo bash scripts/docker-engine.sh stop
#   bash scripts/docker-engine.sh status
#
# start: installs docker.io and debootstrap with apt-get when missing, starts
#   dockerd --iptables=false --bridge=none (works inside VMs and containers without iptables)
#   with storage driver overlay2 when overlayfs can be mounted, else vfs, and its own data
#   root, waits until it answers,
#   and, unless it exists, makes the image $TFGUESS_BASE_IMAGE from a debootstrap of Debian
#   bookworm (python3 3.11, venv, pip, CA certificates), so no registry pull is needed.
#   The socket belongs to group "docker": add users to that group to let them use it.
#   --arch arm64 (on an x86_64 machine): the base image is made for linux/arm64 instead
#   (tfguess-base:bookworm-arm64), and arm64 programs run through QEMU user emulation:
#   qemu-user-static and binfmt-support are installed and the kernel's binfmt_misc handler
#   for aarch64 is checked (it must have the F flag, so containers need no QEMU inside).
#
# Settings (environment):
#   TFGUESS_ENGINE_DIR   data root, log and pid file        (default /var/lib/tfguess-engine)
#   TFGUESS_DOCKER_SOCK  socket path                         (default /var/run/docker.sock)
#   TFGUESS_BASE_IMAGE   base image to create   (default tfguess-base:bookworm, -arm64 added
#                        for --arch arm64)
#   TFGUESS_STORAGE_DRIVER  overlay2 or vfs                  (default: overlay2 when it works)
#   TFGUESS_DEBIAN_MIRROR  mirror for debootstrap            (default: the one apt uses)
set -euo pipefail

ENGINE_DIR=${TFGUESS_ENGINE_DIR:-/var/lib/tfguess-engine}
SOCK=${TFGUESS_DOCKER_SOCK:-/var/run/docker.sock}
ARCH=amd64
if [[ ${2:-} == --arch ]]; then ARCH=${3:-}; fi
case $ARCH in
    amd64) BASE_IMAGE=${TFGUESS_BASE_IMAGE:-tfguess-base:bookworm} ;;
    arm64) BASE_IMAGE=${TFGUESS_BASE_IMAGE:-tfguess-base:bookworm-arm64} ;;
    *) echo "docker-engine: error: --arch takes amd64 or arm64, not '$ARCH'" >&2; exit 2 ;;
esac
PIDFILE=$ENGINE_DIR/dockerd.pid
LOG=$ENGINE_DIR/dockerd.log
export DOCKER_HOST=unix://$SOCK

say() { printf 'docker-engine: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

need_root() {
    [[ $(id -u) == 0 ]] || die "run as root (sudo bash $0 $1)"
}

engine_up() { docker info >/dev/null 2>&1; }

debian_mirror() {
    if [[ -n ${TFGUESS_DEBIAN_MIRROR:-} ]]; then echo "$TFGUESS_DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
            2>/dev/null | grep -E 'debian/?$|debian ' | grep -v security | head -n1 |
          sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//; s/[[:space:]].*$//') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [[ $ARCH == arm64 && $(uname -m) != aarch64 ]]; then
        command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
        command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    fi
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "dockerd/debootstrap missing and no apt-get: install Docker first"
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# overlay2 when the kernel can mount overlayfs on the data root's file system (much faster),
# else vfs (copies the whole file system for every layer and container, but works anywhere).
storage_driver() {
    if [[ -n ${TFGUESS_STORAGE_DRIVER:-} ]]; then echo "$TFGUESS_STORAGE_DRIVER"; return; fi
    local probe driver=vfs
    probe=$(mktemp -d "$ENGINE_DIR/overlay-probe.XXXXXX")
    mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" \
        2>/dev/null; then
        umount "$probe/merged"
        driver=overlay2
    fi
    rm -rf "$probe"
    echo "$driver"
}

start_daemon() {
    if engine_up; then say "engine already answers at $DOCKER_HOST"; return; fi
    mkdir -p "$ENGINE_DIR/data" "$(dirname "$SOCK")"
    getent group docker >/dev/null || groupadd --system docker
    # A daemon killed without a clean stop (a reboot, a killed session) leaves its pid file
    # and socket behind, and dockerd refuses to start over a pid file.
    if [[ -f $PIDFILE ]] && ! kill -0 "$(cat "$PIDFILE" 2>/dev/null)" 2>/dev/null; then
        say "removing the stale pid file of a daemon that is gone"
        rm -f "$PIDFILE" "$SOCK"
    fi
    local driver
    driver=$(storage_driver)
    say "starting dockerd (storage driver $driver, log $LOG)"
    # setsid: the daemon must outlive this script and not get the caller's Ctrl-C.
    setsid dockerd --storage-driver "$driver" --iptables=false --ip-masq=false --bridge=none \
        --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" \
        --pidfile "$PIDFILE" -H "unix://$SOCK" --group docker \
        >"$LOG" 2>&1 </dev/null &
    local i
    for i in $(seq 60); do
        engine_up && { say "engine up after ${i}s at $DOCKER_HOST"; return; }
        kill -0 $! 2>/dev/null || { tail -n 20 "$LOG" >&2; die "dockerd exited (log: $LOG)"; }
        sleep 1
    done
    tail -n 20 "$LOG" >&2
    die "dockerd did not answer within 60 s (log: $LOG)"
}

# Emulation of arm64 programs: the kernel hands aarch64 ELF files to qemu-aarch64-static. The F
# flag makes the kernel open the interpreter once, at registration, so it works in containers
# whose file systems have no QEMU.
check_emulation() {
    [[ $ARCH == arm64 && $(uname -m) != aarch64 ]] || return 0
    local handler=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc: arm64 emulation needs it (a privileged container or a VM)"
    fi
    [[ -e $handler ]] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    [[ -e $handler ]] || die "no binfmt_misc handler for aarch64 (is qemu-user-static installed?)"
    grep -q '^flags:.*F' "$handler" ||
        die "the aarch64 binfmt handler lacks the F flag ($(grep '^flags' "$handler")): reinstall qemu-user-static"
    say "arm64 programs run through $(sed -n 's/^interpreter //p' "$handler")"
}

make_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE present"; return
    fi
    local root mirror t0=$SECONDS
    mirror=$(debian_mirror)
    root=$(mktemp -d "${TMPDIR:-/tmp}/tfguess-rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    local packages=python3,python3-venv,python3-pip,ca-certificates log=$ENGINE_DIR/debootstrap.log
    if [[ $ARCH == amd64 ]]; then
        say "debootstrap bookworm from $mirror (about a minute)"
        debootstrap --variant=minbase --include=$packages bookworm "$root" "$mirror" >"$log" 2>&1 ||
            { tail -n 20 "$log" >&2; die "debootstrap failed"; }
    else
        # Two stages: unpack here, then configure inside the tree, which runs arm64 programs.
        say "debootstrap --arch=arm64 bookworm from $mirror (several minutes under emulation)"
        { debootstrap --arch=arm64 --foreign --variant=minbase --include=$packages bookworm \
              "$root" "$mirror" && chroot "$root" /debootstrap/debootstrap --second-stage; } \
            >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "debootstrap failed"; }
    fi
    chmod 755 "$root"   # mktemp made it 0700: it becomes the image's /
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import --platform "linux/$ARCH" -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    [[ $ARCH == amd64 ]] || label_architecture
    trap - EXIT
    say "base image $BASE_IMAGE made in $((SECONDS - t0)) s"
}

# An engine without multi-platform support (Debian's 20.10) ignores `docker import --platform`
# and labels the image with its own architecture; a build for linux/$ARCH then refuses it.
# Rewrite the label in the image's config (docker save, edit, docker load).
label_architecture() {
    local dir cfg
    [[ $(docker image inspect "$BASE_IMAGE" --format '{{.Architecture}}') == "$ARCH" ]] && return
    dir=$(mktemp -d "${TMPDIR:-/tmp}/tfguess-image.XXXXXX")
    docker save "$BASE_IMAGE" | tar -x -C "$dir"
    cfg=$(sed -E 's/.*"Config":"([^"]+)".*/\1/' "$dir/manifest.json")
    sed -i -E "s/\"architecture\":\"[a-z0-9]+\"/\"architecture\":\"$ARCH\"/" "$dir/$cfg"
    tar -C "$dir" -c . | docker load >/dev/null
    rm -rf "$dir"
    [[ $(docker image inspect "$BASE_IMAGE" --format '{{.Architecture}}') == "$ARCH" ]] ||
        die "could not label $BASE_IMAGE as $ARCH"
    say "labelled $BASE_IMAGE linux/$ARCH"
}

stop_daemon() {
    if [[ ! -f $PIDFILE ]]; then say "no engine started by this script"; return; fi
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { say "engine stopped"; return; }; sleep 1; done
    die "dockerd (pid $pid) did not stop"
}

case ${1:-} in
    start)
        need_root start
        install_packages
        check_emulation
        start_daemon
        make_base_image
        echo "export DOCKER_HOST=$DOCKER_HOST"
        ;;
    stop) need_root stop; stop_daemon ;;
    status)
        if engine_up; then say "engine answers at $DOCKER_HOST"; else say "no engine at $DOCKER_HOST"; exit 1; fi
        ;;
    *) echo "usage: bash $0 start [--arch amd64|arm64] | stop | status" >&2; exit 2 ;;
esac
