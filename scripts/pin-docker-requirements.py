"""Write requirements-docker.txt: the versions installed in a working environment, pinned.

Run with the environment's Python (the one the tests pass in):
    .venv/bin/python scripts/pin-docker-requirements.py
Pins the runtime dependencies of tfguess (and its "export" and "serve" extras), with everything they pull in.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"export", "serve"}
SKIP = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
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
    lines = [f"{n}=={v}" for n, v in sorted(pins.items())]
    out = ROOT / "requirements-docker.txt"
    header = "# Pinned by scripts/pin-docker-requirements.py from a tested environment.\n"
    out.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {out} ({len(lines)} packages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
