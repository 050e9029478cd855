"""The tree shows the architecture: one layer per package (import-linter's contracts in
pyproject.toml), small modules and functions, a short README."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "tfguess"
LAYERS = ["core", "data", "engine", "guess", "training", "export", "curate", "serve"]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 12
MAX_README_LINES = 250


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_vendor" not in p.parts)


def test_import_contracts_are_kept():
    """Packages are layered (core < data < engine < guess < training | export < curate < serve
    | docker < cli); guessing and the engine never import training, exporting or curating."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_layer_package_says_what_it_owns():
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"tfguess.{name} needs a docstring saying what it owns"


def test_modules_are_short():
    long = {str(p.relative_to(PACKAGE)): n for p in sources()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_short():
    long = {}
    for p in sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(PACKAGE)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    assert "bash tests/run.sh" in "\n".join(lines[:12])


def test_an_unmarked_slow_test_fails_the_fast_tier(pytester, monkeypatch):
    """A test over the fast tier's budget without @pytest.mark.slow fails, saying so; the same
    test marked slow passes."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_sample="""
        import time
        import pytest

        def test_quick():
            pass

        def test_unmarked_sleeper():
            time.sleep(0.5)

        @pytest.mark.slow
        def test_marked_sleeper():
            time.sleep(0.5)
    """)
    monkeypatch.setenv("TFGUESS_FAST_TEST_BUDGET_S", "0.2")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked_sleeper took * s without @pytest.mark.slow*"])
