"""Typing as a caller outside the repo sees it: the built wheel, installed in a fresh venv.

The repo's own mypy finds `tether.v1` through `mypy_path`, so it cannot tell whether the
wheel carries the PEP 561 markers; without them a caller's `mypy --strict` silently types
every message and response as Any. These tests build the wheel (`pip wheel`, the
pyproject's hatchling backend), install it with mypy and the stub packages at the versions
pinned in pyproject.toml into a venv in a temporary directory, and run mypy there on
tests/typing/good_caller.py (must pass) and tests/typing/bad_caller.py (each line marked
`# expect: CODE` must get exactly that error, and no other line any).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.tools import describe

ROOT = Path(__file__).resolve().parent.parent
CALLERS = Path(__file__).resolve().parent / "typing"
# What a caller installs next to the client to type-check it; versions from the dev extra.
CHECKER_PACKAGES = ("mypy", "types-protobuf", "types-grpcio")
INSTALL_TIMEOUT_SECONDS = 240.0
EXPECT = re.compile(r"#\s*expect:\s*([a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)\s*$")


@dataclass(frozen=True)
class Venv:
    """A venv outside the repo with the wheel and the checker installed, and a work dir."""

    python: Path
    work: Path
    wheel: Path


def _pinned(names: tuple[str, ...]) -> list[str]:
    """The `name==version` requirements of the dev extra for these packages."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pins = {requirement.split("==")[0]: requirement for requirement in dev if "==" in requirement}
    missing = [name for name in names if name not in pins]
    assert not missing, f"pin {missing} in pyproject.toml's dev extra"
    return [pins[name] for name in names]


def _run(args: list[str | Path], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH/MYPYPATH from the test run: only the venv may resolve `tether`.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "MYPYPATH"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )


def _checked(args: list[str | Path], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = _run(args, cwd=cwd)
    assert result.returncode == 0, describe(result)
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """Build the wheel once and install it into a fresh venv (both outside the repo)."""
    base = tmp_path_factory.mktemp("typing")
    assert not base.is_relative_to(ROOT), "the venv must live outside the repo tree"
    dist = base / "dist"
    _checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, ROOT], cwd=base)
    (wheel,) = dist.glob("tether-*.whl")
    _checked([sys.executable, "-m", "venv", base / "venv"], cwd=base)
    python = base / "venv" / "bin" / "python"
    _checked(
        [python, "-m", "pip", "install", "--quiet", wheel, *_pinned(CHECKER_PACKAGES)],
        cwd=base,
    )
    work = base / "work"
    work.mkdir()
    for caller in ("good_caller.py", "bad_caller.py"):
        shutil.copy(CALLERS / caller, work / caller)
    return Venv(python=python, work=work, wheel=wheel)


def _mypy(venv: Venv, file: str) -> tuple[subprocess.CompletedProcess[str], set[tuple[int, str]]]:
    """Run the venv's `mypy --strict` on a caller file; the (line, code) of each error."""
    result = _run(
        [venv.python, "-m", "mypy", "--strict", "--output", "json", "--no-incremental", file],
        cwd=venv.work,
    )
    errors: set[tuple[int, str]] = set()
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            if report["severity"] == "error":
                errors.add((report["line"], report["code"]))
    return result, errors


def _expected(file: Path) -> set[tuple[int, str]]:
    """The (line, code) pairs that the `# expect: CODE[, CODE]` comments in a file ask for."""
    expected: set[tuple[int, str]] = set()
    for number, text in enumerate(file.read_text().splitlines(), start=1):
        match = EXPECT.search(text)
        if match:
            expected.update((number, code.strip()) for code in match.group(1).split(","))
    return expected


def test_wheel_ships_the_typing_markers_and_stubs(venv: Venv) -> None:
    names = set(zipfile.ZipFile(venv.wheel).namelist())
    assert {"tether/client/py.typed", "tether/v1/py.typed"} <= names
    modules = {
        name.removesuffix(".py") for name in names if re.fullmatch(r"tether/v1/\w+_pb2(_grpc)?\.py", name)
    }
    assert modules, "no generated modules in the wheel"
    missing = sorted(f"{module}.pyi" for module in modules if f"{module}.pyi" not in names)
    assert not missing, f"stubs missing from the wheel: {missing}"


def test_callers_resolve_tether_from_the_installed_wheel(venv: Venv) -> None:
    probe = "import tether.client, tether.v1; print(tether.client.__file__); print(tether.v1.__file__)"
    result = _checked([venv.python, "-c", probe], cwd=venv.work)
    site_packages = venv.python.parent.parent / "lib"
    for path in result.stdout.split():
        assert Path(path).is_relative_to(site_packages), result.stdout


def test_good_caller_passes_mypy_strict(venv: Venv) -> None:
    result, errors = _mypy(venv, "good_caller.py")
    assert not errors, describe(result)
    assert result.returncode == 0, describe(result)


def test_bad_caller_gets_each_expected_error(venv: Venv) -> None:
    expected = _expected(CALLERS / "bad_caller.py")
    assert len(expected) >= 10, "bad_caller.py lost its `# expect:` markers"
    result, errors = _mypy(venv, "bad_caller.py")
    assert result.returncode == 1, describe(result)
    assert sorted(expected - errors) == [], f"mistakes mypy did not report:\n{describe(result)}"
    assert sorted(errors - expected) == [], f"errors nobody expected:\n{describe(result)}"
