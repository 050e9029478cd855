"""Write the Docker image's pinned requirements, one file per architecture.

    .venv/bin/python scripts/pin-docker-requirements.py              # requirements-docker.txt
    .venv/bin/python scripts/pin-docker-requirements.py --arch arm64 # requirements-docker-arm64.txt

linux/amd64: the versions installed in a working environment (run it with the Python of the
environment the tests pass in). Pins the runtime dependencies of tfguess (and its "export"
and "serve" extras), with everything they pull in.

linux/arm64: there is no arm64 environment to read, so pip's resolver chooses the versions for
Linux aarch64 (scripts/check-platforms.py, markers evaluated for that platform), held to the
amd64 pins wherever a package exists in both: the two images run the same versions except
where a platform lacks a wheel. The arm64 image is checked by scripts/arm64-docker-check.sh.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"export", "serve"}
SKIP = {"pip", "setuptools", "wheel"}
PIN_FILES = {"amd64": ROOT / "requirements-docker.txt", "arm64": ROOT / "requirements-docker-arm64.txt"}
HEADER = {
    "amd64": "# Pinned by scripts/pin-docker-requirements.py from a tested environment.\n",
    "arm64": "# Pinned by scripts/pin-docker-requirements.py --arch arm64: pip's resolver for Linux\n"
    "# aarch64, held to the versions of requirements-docker.txt wherever both have them.\n",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in pins or name in SKIP or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is not installed in {sys.prefix}: install the project first")
        pins[name] = dist.version
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            extras_wanted = req.extras or {""}
            if sub_req.marker and not any(
                sub_req.marker.evaluate({"extra": e}) for e in extras_wanted
            ):
                continue
            todo.append(sub_req)
    return pins


def resolved_arm64_pins() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("check_platforms", ROOT / "scripts" / "check-platforms.py")
    check = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    plat = check.PLATFORMS["linux-aarch64"]
    reqs = [str(r) for r in check.project_requirements(plat.env, tuple(EXTRAS))]
    try:
        versions = check.pip_resolve(plat, reqs, constraints=PIN_FILES["amd64"])
    except check.ResolveError as e:
        sys.exit(f"tfguess[export] does not resolve for Linux aarch64 within {PIN_FILES['amd64'].name}:\n{e}")
    return {n: v for n, v in versions.items() if n not in SKIP}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(PIN_FILES), default="amd64")
    arch = ap.parse_args().arch
    pins = installed_pins() if arch == "amd64" else resolved_arm64_pins()
    lines = [f"{n}=={v}" for n, v in sorted(pins.items())]
    out = PIN_FILES[arch]
    out.write_text(HEADER[arch] + "\n".join(lines) + "\n")
    print(f"wrote {out} ({len(lines)} packages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
