"""Check with pip's own resolver that tfguess installs on every platform it supports.

    python scripts/check-platforms.py                  # every target below; exit 1 if one fails
    python scripts/check-platforms.py macos-arm64 -v   # one target, with every version chosen
    python scripts/check-platforms.py --list           # the targets and their pip tags

Targets: `pip install 'tfguess[export]'` on Linux x86_64 and aarch64, macOS arm64 and x86_64,
Windows amd64 (CPython 3.11), and the Docker image's pinned requirements for linux/amd64
(requirements-docker.txt) and linux/arm64 (requirements-docker-arm64.txt).

Each target is resolved with `pip install --dry-run --only-binary=:all: --platform ...
--python-version ... --target ...`, nothing installed. pip does not widen platform tags, so
every manylinux / macOS tag a machine of that kind accepts is listed. pip evaluates
environment markers (`sys_platform`, `platform_machine`, ...) against the interpreter that
runs it, not against --platform, so pip is run with its marker environment replaced by the
target's: the project's markers and those of every dependency are then evaluated as on the
target. A target that resolves to both `tensorflow` and `tensorflow-cpu` fails: one TensorFlow
per install. Constraint files from the pip configuration of this machine (`constraint =`,
PIP_CONSTRAINT) are not applied: the question is whether the declared dependencies resolve
for a user. Other pip settings (index, proxy, certificates) are.

pip reads each wheel's metadata from the index (PEP 658) where it has it, else, with pip 25 or
later, from the wheel's last bytes (HTTP range requests, `--use-feature=fast-deps`): nothing
but metadata is downloaded. An older pip downloads every wheel it considers (TensorFlow's are
hundreds of MB each, and an index that sends no cache headers makes pip's cache no help):
several minutes instead of seconds; the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"
EXTRAS = ("export",)
# Packages whose versions the summary line shows.
SHOWN = ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "coremltools", "numpy")

# glibc of the oldest Linux the check stands for (Debian 11, Ubuntu 20.04: 2.31) and the
# newest macOS it stands for: tags beyond them would accept wheels those machines refuse.
GLIBC_MINOR = 31
MACOS_MAX = 14


def manylinux_tags(arch: str) -> list[str]:
    legacy = ["manylinux2014"] if arch == "aarch64" else ["manylinux1", "manylinux2010", "manylinux2014"]
    return [f"{t}_{arch}" for t in legacy] + [
        f"manylinux_2_{m}_{arch}" for m in range(5 if arch == "x86_64" else 17, GLIBC_MINOR + 1)
    ]


def macos_tags(arch: str) -> list[str]:
    versions = [f"10_{m}" for m in range(9, 17)] + [f"{v}_0" for v in range(11, MACOS_MAX + 1)]
    native = versions if arch == "x86_64" else [v for v in versions if not v.startswith("10_")]
    tags = [f"macosx_{v}_{arch}" for v in native] + [f"macosx_{v}_universal2" for v in versions]
    if arch == "x86_64":
        tags += [f"macosx_{v}_{a}" for v in versions for a in ("intel", "universal", "fat64")]
    return tags


def marker_env(system: str, machine: str) -> dict[str, str]:
    """The values packaging.markers would find on a CPython 3.11 machine of that kind."""
    sys_platform = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}[system]
    full = f"{PYTHON}.9"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "nt" if system == "Windows" else "posix",
        "platform_machine": machine,
        "platform_release": "",
        "platform_system": system,
        "platform_version": "",
        "python_full_version": full,
        "platform_python_implementation": "CPython",
        "python_version": PYTHON,
        "sys_platform": sys_platform,
    }


@dataclass(frozen=True)
class Platform:
    name: str
    label: str
    env: dict[str, str]
    tags: list[str]


PLATFORMS = {
    p.name: p
    for p in (
        Platform("linux-x86_64", "Linux x86_64", marker_env("Linux", "x86_64"), manylinux_tags("x86_64")),
        Platform("linux-aarch64", "Linux aarch64", marker_env("Linux", "aarch64"), manylinux_tags("aarch64")),
        Platform("macos-arm64", "macOS arm64", marker_env("Darwin", "arm64"), macos_tags("arm64")),
        Platform("macos-x86_64", "macOS x86_64", marker_env("Darwin", "x86_64"), macos_tags("x86_64")),
        Platform("windows-amd64", "Windows amd64", marker_env("Windows", "AMD64"), ["win_amd64"]),
    )
}


@dataclass(frozen=True)
class Target:
    name: str
    platform: Platform
    pins: Path | None = None  # a Docker pin file: every package resolved must be pinned there
    what: str = field(default="")


TARGETS = {
    t.name: t
    for t in [
        Target(p.name, p, what="pip install 'tfguess[export]'") for p in PLATFORMS.values()
    ]
    + [
        Target("docker-amd64", PLATFORMS["linux-x86_64"], ROOT / "requirements-docker.txt",
               "Docker linux/amd64 (requirements-docker.txt)"),
        Target("docker-arm64", PLATFORMS["linux-aarch64"], ROOT / "requirements-docker-arm64.txt",
               "Docker linux/arm64 (requirements-docker-arm64.txt)"),
    ]
}


def project_requirements(env: dict[str, str], extras=EXTRAS) -> list[Requirement]:
    """tfguess's dependencies (with the extras) that apply on a machine with that marker env."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [(r, "") for r in project["dependencies"]]
    listed += [(r, e) for e in extras for r in project["optional-dependencies"][e]]
    out = []
    for text, extra in listed:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
            req.marker = None
            out.append(req)
    return out


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


FAST_PIP = (25, 0)


def pip_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(x) for x in re.findall(r"\d+", version("pip"))[:2])


# Run pip with its marker environment replaced by the target's (argv[1], JSON).
PIP_WITH_ENV = """
import json, sys
from pip._vendor.packaging import markers
env = json.loads(sys.argv.pop(1))
markers.default_environment = lambda: dict(env)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Result:
    target: Target
    ok: bool
    seconds: float
    versions: dict[str, str]
    problem: str = ""


def pip_problem(output: str) -> str:
    """The lines of pip's output that say what did not resolve."""
    lines = [ln.strip() for ln in output.splitlines()]
    wanted = [
        ln for ln in lines
        if ln.startswith("ERROR:") or "conflict is caused by" in ln or " depends on " in ln
        or ln.startswith("The user requested")
    ]
    return "\n".join(wanted or lines[-8:])


class ResolveError(Exception):
    """pip found no set of wheels; the message is what pip said."""


# At most one of these in any install (tensorflow-cpu and tensorflow are the same modules).
TENSORFLOWS = {"tensorflow", "tensorflow-cpu"}
# Installed in every virtual environment, not pinned by the Docker pin files.
TOOLING = {"pip", "setuptools", "wheel"}


def pip_resolve(plat: Platform, requirements: list[str], constraints: Path | None = None,
                cache_dir: str | None = None) -> dict[str, str]:
    """The versions pip would install for ``requirements`` on ``plat``, by canonical name."""
    with tempfile.TemporaryDirectory(prefix="tfguess-platforms-") as tmp:
        (Path(tmp) / "requirements.txt").write_text("\n".join(requirements) + "\n")
        cmd = [sys.executable, "-c", PIP_WITH_ENV, json.dumps(plat.env),
               "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--python-version", PYTHON, "--implementation", "cp",
               "--target", str(Path(tmp) / "target"), "--report", str(Path(tmp) / "report.json"),
               "--quiet", "--progress-bar", "off", "--disable-pip-version-check",
               "-r", str(Path(tmp) / "requirements.txt")]
        for tag in plat.tags:
            cmd += ["--platform", tag]
        if constraints:
            cmd += ["--constraint", str(constraints)]
        if cache_dir:
            cmd += ["--cache-dir", cache_dir]
        if pip_version() >= FAST_PIP:
            cmd += ["--use-feature=fast-deps"]
        # No constraint file from this machine's pip configuration (see the module docstring).
        env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_REQUIRE_VIRTUALENV": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ResolveError(pip_problem(proc.stdout + proc.stderr))
        report = json.loads((Path(tmp) / "report.json").read_text())
    return {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }


def resolve(target: Target, cache_dir: str | None) -> Result:
    plat = target.platform
    reqs = [str(r) for r in project_requirements(plat.env)]
    pins = read_pins(target.pins) if target.pins else {}
    reqs += [f"{n}=={v}" for n, v in pins.items()]
    t0 = time.monotonic()
    try:
        versions = pip_resolve(plat, reqs, cache_dir=cache_dir)
    except ResolveError as e:
        return Result(target, False, time.monotonic() - t0, {}, str(e))
    seconds = time.monotonic() - t0
    both = sorted(TENSORFLOWS & set(versions))
    if len(both) > 1:
        return Result(target, False, seconds, versions,
                      f"installs {' and '.join(both)}: two copies of TensorFlow (is a dependency "
                      "pulling tf-keras or tensorflow? keep it in an extra)")
    if pins:
        unpinned = sorted(set(versions) - set(pins) - TOOLING)
        if unpinned:
            return Result(target, False, seconds, versions,
                          f"resolved but not pinned in {target.pins.name}: {', '.join(unpinned)} "
                          "(re-pin with scripts/pin-docker-requirements.py)")
    return Result(target, True, seconds, versions)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all of {', '.join(TARGETS)}")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every version chosen")
    ap.add_argument("--list", action="store_true", help="print the targets and their pip tags")
    ap.add_argument("--cache-dir", help="pip cache folder (default: pip's)")
    ap.add_argument("--jobs", type=int, default=4, help="targets resolved at once (default 4)")
    ap.add_argument("--json", type=Path, help="also write every version chosen, per target, here")
    opts = ap.parse_args(argv)
    unknown = [t for t in opts.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    targets = [TARGETS[t] for t in opts.targets or TARGETS]
    if opts.list:
        for t in targets:
            print(f"{t.name}: {t.what}\n  markers: {t.platform.env}\n  tags: {' '.join(t.platform.tags)}")
        return 0
    missing = [t.pins for t in targets if t.pins and not t.pins.exists()]
    if missing:
        sys.exit(f"check-platforms: {missing[0]} is missing (scripts/pin-docker-requirements.py makes it)")

    if pip_version() < FAST_PIP:
        print(f"check-platforms: pip {'.'.join(map(str, pip_version()))} downloads whole wheels to "
              "read their dependencies (pip >= 25 reads only their metadata): this takes minutes",
              file=sys.stderr)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        results = list(pool.map(lambda t: resolve(t, opts.cache_dir), targets))
    failed = 0
    for r in results:
        shown = ", ".join(f"{n} {r.versions[n]}" for n in SHOWN if n in r.versions)
        if r.ok:
            print(f"ok    {r.target.name:14} {len(r.versions):3} packages ({r.seconds:4.0f} s): {shown}")
        else:
            failed += 1
            print(f"FAIL  {r.target.name:14} {r.target.what} does not resolve for "
                  f"{r.target.platform.label}, CPython {PYTHON} ({r.seconds:.0f} s):")
            for line in r.problem.splitlines():
                print(f"      {line}")
        if opts.verbose and r.versions:
            print("      " + " ".join(f"{n}=={v}" for n, v in sorted(r.versions.items())))
    if opts.json:
        opts.json.write_text(json.dumps({r.target.name: r.versions for r in results}, indent=1))
    print(f"check-platforms: {len(results) - failed} of {len(results)} targets resolve "
          f"({time.monotonic() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
