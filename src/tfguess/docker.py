"""Run tfguess commands in a Docker container; the host side needs only the docker SDK.

    python -m tfguess.docker check
    python -m tfguess.docker build [--image NAME] [--base-image IMAGE] [--tf-package PKG]
    python -m tfguess.docker run [--image NAME] [--rw PATH]... -- train /abs/tf_files ...

``run`` mounts every argument that names an existing file or folder at the same absolute path
inside the container (read-only, or read-write when also given with ``--rw``), so paths in the
container's messages are the host's. The container runs as the caller's uid:gid, so the files
it writes belong to the caller. The image is built from the repository's Dockerfile when it is
missing, or when it was built by this launcher from older sources.

Settings (environment): TFGUESS_IMAGE (default tfguess:latest), TFGUESS_BASE_IMAGE and
TFGUESS_TF_PACKAGE (build arguments), TFGUESS_BUILD_CA (CA bundle pip needs during the build;
by default the one pip on this machine is configured with), TFGUESS_DOCKER_CACHE (the host
folder that keeps converted engines between runs; default ~/.cache/tfguess/docker), TFGUESS_GPUS (e.g. ``all``: pass
the host's NVIDIA GPUs), TFGUESS_DOCKER_NETWORK (default ``none``: the container is offline).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import io
import os
import signal
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from docker.types import DeviceRequest, Mount
from docker.utils.build import exclude_paths

from tfguess.core.cachedir import cache_dir
from tfguess.core.errors import TfguessError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = "tfguess:latest"
SOURCE_LABEL = "org.tfguess.source-hash"
CA_IN_CONTEXT = ".build-ca.pem"
CONTAINER_HOME = "/tmp"
# Mounting over these would hide the image's own files.
RESERVED = ("/bin", "/boot", "/dev", "/etc", "/home/tfguess", "/lib", "/lib32", "/lib64",
            "/opt/venv", "/proc", "/run", "/sbin", "/sys", "/usr", "/var/lib")
PASSED_ENV = ("TQDM_DISABLE", "TF_CPP_MIN_LOG_LEVEL")  # passed on to the container
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")


class DockerError(TfguessError):
    """A problem the user can fix; the message says how."""


@dataclass(frozen=True)
class HostPath:
    path: Path
    writable: bool = False


def default_image() -> str:
    return os.environ.get("TFGUESS_IMAGE") or DEFAULT_IMAGE


def connect() -> docker.DockerClient:
    """A client for the daemon DOCKER_HOST (or the default socket) names, checked with a ping."""
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        raise DockerError(
            f"the Docker daemon at {where} does not answer ({exc}).\n"
            "Start Docker (on Debian: sudo bash scripts/docker-engine.sh start), check that you "
            "may use its socket (group 'docker'), or run locally with TFGUESS_LOCAL=1."
        ) from None
    return client


# --- image ---------------------------------------------------------------------------------

def _context_files(root: Path) -> list[str]:
    ignore = root / ".dockerignore"
    patterns = [
        line.strip() for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ] if ignore.exists() else []
    return sorted(exclude_paths(str(root), patterns, dockerfile="Dockerfile"))


def source_hash(root: Path = REPO_ROOT) -> str:
    """A hash of everything the image is built from (the build context)."""
    digest = hashlib.sha256()
    for rel in _context_files(root):
        path = root / rel
        if path.is_file():
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def host_ca_bundle() -> Path | None:
    """The CA bundle pip on this machine uses, if it is configured with one."""
    candidates = [os.environ.get("TFGUESS_BUILD_CA"), os.environ.get("PIP_CERT")]
    config_files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"),
                    Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf"]
    for conf in config_files:
        parser = configparser.ConfigParser()
        try:
            parser.read(conf)
        except (configparser.Error, OSError):
            continue
        candidates.append(parser.get("global", "cert", fallback=None))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def host_build_args() -> dict[str, str]:
    """Build arguments from the environment: base image, TensorFlow package, package index."""
    args = {}
    if os.environ.get("TFGUESS_BASE_IMAGE"):
        args["BASE_IMAGE"] = os.environ["TFGUESS_BASE_IMAGE"]
    if os.environ.get("TFGUESS_TF_PACKAGE"):
        args["TF_PACKAGE"] = os.environ["TFGUESS_TF_PACKAGE"]
    for name in PIP_BUILD_ARGS:
        value = os.environ.get(name, "")
        urls = value.split()
        # a file:// index on this machine is not visible inside the build
        if value and not any(u.startswith("file:") or u.startswith("/") for u in urls):
            args[name] = value
    return args


def _context_tar(root: Path, ca_bundle: Path | None) -> IO[bytes]:
    out = tempfile.TemporaryFile()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for rel in _context_files(root):
            tar.add(root / rel, arcname=rel, recursive=False)
        if ca_bundle is not None:
            data = ca_bundle.read_bytes()
            info = tarfile.TarInfo(CA_IN_CONTEXT)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def build_image(
    client: docker.DockerClient,
    image: str | None = None,
    *,
    root: Path = REPO_ROOT,
    build_args: dict[str, str] | None = None,
    ca_bundle: Path | None = None,
    platform: str | None = None,
    log: IO[str] = sys.stderr,
) -> str:
    """Build ``image`` from ``root``/Dockerfile, streaming the build output to ``log``.

    ``platform`` (e.g. ``linux/arm64``): build for another architecture than the engine's.
    """
    image = image or default_image()
    if not (root / "Dockerfile").is_file():
        raise DockerError(f"no Dockerfile in {root}: cannot build the image {image}")
    args = host_build_args() if build_args is None else dict(build_args)
    print(f"tfguess: building the image {image} from {root}/Dockerfile "
          f"(build args: {args or 'none'}; this takes a few minutes the first time)", file=log)
    try:
        old_id = client.images.get(image).id
    except ImageNotFound:
        old_id = None
    context = _context_tar(root, ca_bundle)
    try:
        stream = client.api.build(
            fileobj=context, custom_context=True, tag=image,
            buildargs={**args, "SOURCE_HASH": source_hash(root)}, network_mode="host",
            rm=True, forcerm=True, decode=True, platform=platform,
        )
        for chunk in stream:
            if "stream" in chunk:
                log.write(chunk["stream"])
                log.flush()
            elif "error" in chunk:
                raise DockerError(f"building {image} failed: {chunk['error'].strip()}")
    except APIError as exc:
        raise DockerError(f"building {image} failed: {exc.explanation or exc}") from None
    finally:
        context.close()
    _remove_replaced(client, old_id, image, log)
    return image


def _remove_replaced(client: docker.DockerClient, old_id: str | None, image: str, log) -> None:
    """Delete the image a rebuild replaced (it is untagged now and takes gigabytes)."""
    if old_id is None or old_id == client.images.get(image).id:
        return
    try:
        client.images.remove(old_id)
        print(f"tfguess: removed the replaced image {old_id[:19]}", file=log)
    except APIError:  # still used by a container: leave it
        pass


def ensure_image(client: docker.DockerClient, image: str, *, build_if_missing: bool = True) -> None:
    """Build ``image`` when it is missing, or when this launcher built it from other sources."""
    try:
        labels = client.images.get(image).labels or {}
    except ImageNotFound:
        if not build_if_missing:
            raise DockerError(f"the image {image} is missing: build it with "
                              "python -m tfguess.docker build") from None
        build_image(client, image, ca_bundle=host_ca_bundle())
        return
    built_from = labels.get(SOURCE_LABEL)
    if build_if_missing and built_from and (REPO_ROOT / "Dockerfile").is_file():
        if built_from != source_hash():
            print(f"tfguess: the image {image} is older than the sources; rebuilding",
                  file=sys.stderr)
            build_image(client, image, ca_bundle=host_ca_bundle())


# --- run -----------------------------------------------------------------------------------

def _check_mountable(path: Path) -> None:
    text = str(path)
    if text in ("/", "/tmp") or any(text == r or text.startswith(r + "/") for r in RESERVED):
        raise DockerError(f"{text}: cannot be mounted into the container (it would hide the "
                          "image's own files); move it elsewhere or run with TFGUESS_LOCAL=1")


def resolve_mounts(paths: Sequence[HostPath]) -> list[HostPath]:
    """Absolute, existing, de-duplicated paths (read-write wins over read-only)."""
    writable: dict[Path, bool] = {}
    for host in paths:
        path = Path(os.path.abspath(host.path))
        if not path.exists():
            raise DockerError(f"{path}: no such file or folder")
        _check_mountable(path)
        writable[path] = writable.get(path, False) or host.writable
    return [HostPath(p, w) for p, w in writable.items()]


def path_arguments(args: Sequence[str]) -> tuple[list[str], list[HostPath]]:
    """Make arguments that name existing files or folders absolute; return them as mounts too.

    Handles plain arguments and ``--option=PATH``.
    """
    out, mounts = [], []
    for arg in args:
        prefix, value = "", arg
        if arg.startswith("--") and "=" in arg:
            prefix, value = arg.split("=", 1)
            prefix += "="
        if value and not value.startswith("-") and os.path.exists(value):
            absolute = os.path.abspath(value)
            mounts.append(HostPath(Path(absolute)))
            arg = prefix + absolute
        out.append(arg)
    return out, mounts


def _gpu_requests() -> list[DeviceRequest]:
    gpus = os.environ.get("TFGUESS_GPUS", "")
    if not gpus:
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=gpus.split(","), capabilities=[["gpu"]])]


def _stream(output: Iterator[tuple[bytes | None, bytes | None]]) -> None:
    for out, err in output:
        for chunk, target in ((out, sys.stdout), (err, sys.stderr)):
            if chunk:
                target.buffer.write(chunk)
                target.flush()


def docker_cache_dir() -> Path:
    """The host folder that keeps the container's caches (converted weights, TFLite engines)
    between runs, so only the first run converts: ``$TFGUESS_DOCKER_CACHE`` or the tfguess cache
    folder's ``docker/``. Created here, so that it belongs to the caller."""
    path = Path(os.environ.get("TFGUESS_DOCKER_CACHE") or cache_dir() / "docker").expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DockerError(f"cannot create the cache folder {path} ({exc.strerror}): set "
                          "TFGUESS_DOCKER_CACHE to a folder you can write to") from None
    return path


def run_in_docker(
    subcommand_args: Sequence[str],
    mounts: Sequence[HostPath] = (),
    image: str | None = None,
    build_if_missing: bool = True,
    publish: int | None = None,
) -> int:
    """Run ``tfguess SUBCOMMAND_ARGS`` in a container and return its exit status.

    Arguments naming existing paths are made absolute and mounted read-only; ``mounts`` adds
    paths (read-write when ``writable``). ``publish``: a port the container's server listens
    on, reachable on the host's 127.0.0.1 only. Ctrl-C (or SIGTERM) stops and removes the
    container.
    """
    image = image or default_image()
    args, arg_mounts = path_arguments(subcommand_args)
    cache = docker_cache_dir()
    binds = resolve_mounts([*mounts, *arg_mounts, HostPath(cache, writable=True)])
    client = connect()
    ensure_image(client, image, build_if_missing=build_if_missing)
    network, ports = os.environ.get("TFGUESS_DOCKER_NETWORK", "none"), None
    if publish:
        if client.networks.list(names=["bridge"]):
            # the server listens on the container's interfaces; Docker forwards host 127.0.0.1 only
            network, ports = "bridge", {f"{publish}/tcp": ("127.0.0.1", publish)}
            args = [*args, "--host", "0.0.0.0"]
        else:  # an engine without a bridge network: share the host's, listening on 127.0.0.1
            network = "host"
        print(f"tfguess: port {publish} published on 127.0.0.1 only ({network} network)",
              file=sys.stderr)
    user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
    environment = {"HOME": CONTAINER_HOME, "MPLCONFIGDIR": f"{CONTAINER_HOME}/.matplotlib",
                   "TFGUESS_CACHE": str(cache)}
    environment.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    try:
        container = client.containers.create(
            image, command=args, user=user, detach=True, environment=environment,
            mounts=[Mount(target=str(m.path), source=str(m.path), type="bind",
                          read_only=not m.writable) for m in binds],
            network_mode=network, ports=ports,
            working_dir=CONTAINER_HOME, device_requests=_gpu_requests() or None,
        )
    except APIError as exc:
        raise DockerError(f"cannot create the container: {exc.explanation or exc}") from None
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        # attached before the start, so that no output is missed
        output = client.api.attach(container.id, stdout=True, stderr=True, stream=True,
                                   logs=True, demux=True)
        try:
            container.start()
        except APIError as exc:
            raise DockerError(f"cannot start the container: {exc.explanation or exc}") from None
        _stream(output)
        status = int(container.wait()["StatusCode"])
        if status == 137:
            print("tfguess: the container was killed (out of memory?)", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("\ntfguess: interrupted, stopping the container", file=sys.stderr)
        container.stop(timeout=3)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            container.remove(force=True)
        except DockerException:
            pass


# --- command line --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfguess.docker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="exit 0 when the Docker daemon answers")
    build = sub.add_parser("build", help="build the image from the repository's Dockerfile")
    build.add_argument("--image", default=None, help=f"image tag (default {DEFAULT_IMAGE})")
    build.add_argument("--base-image", help="BASE_IMAGE build argument")
    build.add_argument("--tf-package", help="TF_PACKAGE build argument, e.g. tensorflow[and-cuda]")
    build.add_argument("--platform", help="e.g. linux/arm64 (default: the engine's own)")
    run = sub.add_parser("run", help="run tfguess in a container: run [options] -- ARGS...")
    run.add_argument("--image", default=None, help=f"image (default {DEFAULT_IMAGE})")
    run.add_argument("--rw", action="append", default=[], type=Path, metavar="PATH",
                     help="mount PATH read-write (the outputs)")
    run.add_argument("--no-build", action="store_true", help="fail when the image is missing")
    run.add_argument("--publish", type=int, metavar="PORT",
                     help="make the container's server port reachable on the host's 127.0.0.1")
    run.add_argument("args", nargs=argparse.REMAINDER, help="tfguess subcommand and arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    try:
        if opts.command == "check":
            connect()
            return 0
        if opts.command == "build":
            build_args: dict[str, Any] = host_build_args()
            if opts.base_image:
                build_args["BASE_IMAGE"] = opts.base_image
            if opts.tf_package:
                build_args["TF_PACKAGE"] = opts.tf_package
            build_image(connect(), opts.image, build_args=build_args, ca_bundle=host_ca_bundle(),
                        platform=opts.platform)
            return 0
        args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
        if not args:
            _parser().error("run: give the tfguess subcommand and its arguments after --")
        mounts = [HostPath(p, writable=True) for p in opts.rw]
        return run_in_docker(args, mounts, image=opts.image, build_if_missing=not opts.no_build,
                             publish=opts.publish)
    except DockerError as exc:
        print(f"tfguess: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ntfguess: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
